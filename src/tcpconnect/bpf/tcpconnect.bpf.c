// SPDX-License-Identifier: GPL-2.0
/*
 * Kernel side of tcpconnect, built only on stable tracepoints (no kprobes,
 * no trampolines) and CO-RE reads, so it needs neither kernel headers nor a
 * compiler on the traced machine.
 *
 * Every hook exists twice: as a tp_btf program (plain loads on BTF-typed
 * arguments, Linux 5.8+ with BTF) and as a raw_tp program (probe reads, for
 * kernels without BTF of their own, run with --btf FILE). User space loads
 * one of the two with set_autoload; see kernel_read.bpf.h.
 *
 * An attempt is seen when a TCP socket moves CLOSE -> SYN_SENT, which happens
 * inside connect() (and io_uring connect, and sendto(MSG_FASTOPEN)) in the
 * context of the task doing it. The local port is chosen just after that
 * transition, so when it is wanted the attempt is parked in `pending` until
 * the SYN leaves (net_dev_queue) or the socket leaves SYN_SENT, whichever
 * comes first. With --outcome every attempt is parked until it leaves
 * SYN_SENT, and is reported (or counted) then with how it ended.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "tcpconnect.h"
#include "kernel_read.bpf.h"
#include "dns_packet.bpf.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
/* errno values (the same on every Linux architecture but alpha, mips,
 * parisc and sparc, which this tool does not build for). */
#define EBADF 9
#define EFAULT 14
#define ENOTSOCK 88
#define EAFNOSUPPORT 97
#define EADDRNOTAVAIL 99
#define EISCONN 106
#define EALREADY 114
#define EINPROGRESS 115

/* Filters and modes, written by user space before load. */
const volatile __u32 filter_pid = 0;
const volatile __u32 filter_uid = 0;
const volatile bool filter_by_uid = false;
const volatile __u16 filter_family = 0; /* 0, 4 or 6 */
const volatile bool filter_by_port = false;
const volatile bool filter_by_cgroup_map = false;
const volatile bool filter_by_mntns_map = false;
const volatile __u64 filter_cgroup_id = 0;
const volatile __u32 filter_netns = 0; /* network namespace inode, --netns */
const volatile bool count_mode = false;
/* With count_mode: whether each connect is also sent as an event (--metrics
 * beside the rows), and which fields of count_key are filled. */
const volatile bool want_events = true;
const volatile bool count_saddr = false;
const volatile bool count_daddr = false;
const volatile bool count_dport = false;
const volatile bool count_uid = false;
const volatile bool count_comm = false;
const volatile bool count_cgroup = false;
const volatile bool want_lport = false;
const volatile bool want_outcome = false;
/* --failed: attempts that end ESTABLISHED are neither sent nor counted. */
const volatile bool failed_only = false;
/* Details filled only when printed or filtered on: each costs the traced
 * connect tens of nanoseconds. */
const volatile bool want_ts = false;
const volatile bool want_ids = false; /* cgroup, mount and network namespace ids */
/* connect() calls are followed from entry to return (the syscall programs
 * are attached), for the attempts that fail before SYN_SENT. */
const volatile bool follow_connect_calls = false;
/* -P ports, one bit each: a plain load where a hash lookup costs ~40 ns. */
const volatile __u64 port_bitmap[65536 / 64] = {};

/* Read by user space through the mmapped .bss. */
__u64 lost_events = 0;
__u64 lost_dns_events = 0;
/* -d on kernels whose tracing programs can read only the linear area. */
__u64 dns_unreadable = 0;
__u64 dns_uncheckable = 0;
__u64 count_failures = 0;
__u64 pending_failures = 0;
__s64 pending_count = 0;
/* connect() calls that could not be followed (connect_calls full): a
 * failure before SYN_SENT of one of them would not be seen. */
__u64 connect_call_failures = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} dns_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct event);
} pending SEC(".maps");

/* connect() calls under way to an IPv4 or IPv6 address, by thread: the
 * attempt as far as the call's own arguments tell it, and the descriptor.
 * Removed when the socket reaches SYN_SENT, where the attempt is reported
 * as usual, or when the call returns; what is left then failed before
 * SYN_SENT. Whether the descriptor is a TCP socket is looked up only then:
 * that walk through the task's file table was most of what following a
 * call cost. */
struct connect_call {
	struct event e;
	__s32 fd;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct connect_call);
} connect_calls SEC(".maps");

/* Two count tables, one live at a time: to read and reset the counts, user
 * space points `counts` at the other table, which returns only once every
 * program that could still be adding to the old one has finished. The old
 * table is then read and emptied with nothing writing to it, so no connect
 * is lost or counted twice at an interval boundary. Capacity is set by user
 * space before load. */
struct count_table {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct count_key);
	__type(value, __u64);
} counts_0 SEC(".maps"), counts_1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct count_table);
} counts SEC(".maps") = {
	.values = { &counts_0 },
};

/* Layouts match bcc's pinned maps so users can keep the maps they have; user
 * space replaces these with the pinned ones before load. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, __u64);
} cgroup_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, __u32);
} mntns_map SEC(".maps");

static __always_inline bool is_v4_mapped(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;

	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff);
}

static __always_inline __u16 local_port(const struct sock *sk)
{
	/* inet_sport, not skc_num: after a refused connect the kernel has
	 * already cleared skc_num by the time we may look. A probe read even
	 * in tp_btf programs: the verifier types sk as struct sock and refuses
	 * a plain load past it into struct inet_sock. */
	return bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
}

static __always_inline void read_v4_addresses(const struct sock_common *skc, bool typed,
					      struct event *e)
{
	e->family = 4;
	*(__u32 *)e->saddr = READ_FIELD(typed, skc, skc_rcv_saddr);
	*(__u32 *)e->daddr = READ_FIELD(typed, skc, skc_daddr);
}

/* Fills the socket part of *e; false when the socket is of no interest. */
static __always_inline bool read_addresses(const struct sock *sk, bool typed, struct event *e)
{
	const struct sock_common *skc = &sk->__sk_common;
	__u16 family = READ_FIELD(typed, skc, skc_family);

	if (family == AF_INET) {
		read_v4_addresses(skc, typed, e);
	} else if (family == AF_INET6) {
		struct in6_addr daddr = READ_FIELD(typed, skc, skc_v6_daddr);

		__builtin_memcpy(e->daddr, &daddr, sizeof(e->daddr));
		if (is_v4_mapped(e->daddr)) {
			/* A v6 socket talking to a v4 peer is an IPv4 connection
			 * on the wire; the v4 fields are set by now, the mapped v6
			 * source may not be yet. */
			__builtin_memset(e->daddr, 0, sizeof(e->daddr));
			read_v4_addresses(skc, typed, e);
		} else {
			struct in6_addr saddr = READ_FIELD(typed, skc, skc_v6_rcv_saddr);

			e->family = 6;
			__builtin_memcpy(e->saddr, &saddr, sizeof(e->saddr));
		}
	} else {
		return false;
	}
	e->dport = bpf_ntohs(READ_FIELD(typed, skc, skc_dport));
	return true;
}

/* The current task with its BTF type, so its fields are plain loads: what
 * bpf_get_current_pid_tgid(), bpf_get_current_uid_gid() and
 * bpf_get_current_comm() return, without a helper call for each. NULL where
 * the kernel cannot type it (the helper exists from Linux 5.11; raw_tp
 * programs on a kernel without BTF): then those helpers are used. */
static __always_inline struct task_struct *typed_current_task(bool typed)
{
	if (typed && bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_get_current_task_btf))
		return bpf_get_current_task_btf();
	return NULL;
}

static __always_inline bool task_wanted(const struct task_struct *task, struct event *e)
{
	if (task) {
		e->pid = task->tgid;
		e->tid = task->pid;
		e->uid = task->cred->uid.val;
	} else {
		__u64 pid_tgid = bpf_get_current_pid_tgid();

		e->pid = pid_tgid >> 32;
		e->tid = (__u32)pid_tgid;
		e->uid = (__u32)bpf_get_current_uid_gid();
	}
	if (filter_pid && e->pid != filter_pid)
		return false;
	if (filter_by_uid && e->uid != filter_uid)
		return false;
	return true;
}

/* Checked after the cheaper task and connection filters, so a connect that
 * -P or -4/-6 rejects does not pay for these lookups. */
static __always_inline bool container_wanted(const struct task_struct *task, struct event *e)
{
	if (want_ids || count_cgroup || filter_cgroup_id || filter_by_cgroup_map) {
		e->cgroup_id = bpf_get_current_cgroup_id();
		if (filter_cgroup_id && e->cgroup_id != filter_cgroup_id)
			return false;
		if (filter_by_cgroup_map && !bpf_map_lookup_elem(&cgroup_map, &e->cgroup_id))
			return false;
	}
	if (want_ids || filter_by_mntns_map) {
		if (task) {
			e->mntns_id = task->nsproxy->mnt_ns->ns.inum;
		} else {
			struct task_struct *current = (void *)bpf_get_current_task();

			e->mntns_id = BPF_CORE_READ(current, nsproxy, mnt_ns, ns.inum);
		}
		if (filter_by_mntns_map && !bpf_map_lookup_elem(&mntns_map, &e->mntns_id))
			return false;
	}
	return true;
}

/* The namespace of the socket, not of the task: a task may connect through
 * a socket made in another namespace (setns after socket(), a socket passed
 * over a unix socket), and addresses mean something only in the socket's. */
static __always_inline bool netns_wanted(const struct sock *sk, bool typed, struct event *e)
{
	if (want_ids || filter_netns) {
		const struct net *net = READ_FIELD(typed, &sk->__sk_common, skc_net.net);

		e->netns = READ_FIELD(typed, net, ns.inum);
		if (filter_netns && e->netns != filter_netns)
			return false;
	}
	return true;
}

static __always_inline bool connection_wanted(struct event *e)
{
	if (filter_family && e->family != filter_family)
		return false;
	if (filter_by_port && !(port_bitmap[e->dport / 64] & (1ULL << (e->dport % 64))))
		return false;
	return true;
}

static __always_inline void count_connect(const struct event *e)
{
	struct count_key key = {};
	__u64 one = 1, *value;
	__u32 live = 0;
	void *table = bpf_map_lookup_elem(&counts, &live);

	if (!table) {
		/* Cannot happen (user space only ever swaps the slot), but a
		 * connect that is not counted must still show in the losses. */
		__sync_fetch_and_add(&count_failures, 1);
		return;
	}
	if (count_saddr)
		__builtin_memcpy(key.saddr, e->saddr, sizeof(key.saddr));
	if (count_daddr)
		__builtin_memcpy(key.daddr, e->daddr, sizeof(key.daddr));
	if (count_saddr || count_daddr)
		key.family = e->family;
	if (count_dport)
		key.dport = e->dport;
	if (count_uid)
		key.uid = e->uid;
	if (count_cgroup)
		key.cgroup_id = e->cgroup_id;
	if (count_comm)
		__builtin_memcpy(key.comm, e->comm, sizeof(key.comm));
	/* Both 0 without --outcome. */
	key.outcome = e->outcome;
	key.error = e->error;
	value = bpf_map_lookup_elem(table, &key);
	if (value) {
		__sync_fetch_and_add(value, 1);
		return;
	}
	/* Another CPU may have inserted the key meanwhile: BPF_NOEXIST then
	 * fails with EEXIST and the count goes to the existing entry. */
	if (bpf_map_update_elem(table, &key, &one, BPF_NOEXIST)) {
		value = bpf_map_lookup_elem(table, &key);
		if (value)
			__sync_fetch_and_add(value, 1);
		else
			__sync_fetch_and_add(&count_failures, 1);
	}
}

static __always_inline void submit(const struct event *e)
{
	struct event *out = bpf_ringbuf_reserve(&events, sizeof(*out), 0);

	if (!out) {
		__sync_fetch_and_add(&lost_events, 1);
		return;
	}
	__builtin_memcpy(out, e, sizeof(*out));
	bpf_ringbuf_submit(out, ringbuf_flags(&events));
}

#define SO_EE_ORIGIN_ICMP 2
#define SO_EE_ORIGIN_ICMP6 3

/* The error that ended an attempt leaving SYN_SENT for CLOSE, 0 if none.
 * sk_err first (see resolve_pending). An ICMP error that arrives while the
 * connecting task holds the socket (a peer on this host, answering over
 * veth during connect() itself) is only kept in sk_err_soft, and the
 * socket stays in SYN_SENT; a non-blocking client reads it with SO_ERROR,
 * which clears it, then closes. Kernels that also queue that ICMP error on
 * the socket's error queue (6.18 does, without IP_RECVERR) still hold it
 * there. */
static __always_inline __u16 attempt_error(const struct sock *sk, bool typed)
{
	const struct sk_buff_head *queue = &sk->sk_error_queue;
	const struct sock_exterr_skb *serr;
	struct sk_buff *last;
	int err;

	err = READ_FIELD(typed, sk, sk_err);
	if (err)
		return err;
	err = READ_FIELD(typed, sk, sk_err_soft);
	if (err)
		return err;
	last = BPF_CORE_READ(queue, prev);
	if ((void *)last == (void *)queue)
		return 0;
	serr = (const void *)last + bpf_core_field_offset(struct sk_buff, cb);
	if (BPF_CORE_READ(serr, ee.ee_origin) != SO_EE_ORIGIN_ICMP &&
	    BPF_CORE_READ(serr, ee.ee_origin) != SO_EE_ORIGIN_ICMP6)
		return 0;
	return BPF_CORE_READ(serr, ee.ee_errno);
}

/* Resolves a parked attempt of sk, if any, now that its local port is set
 * or (with --outcome) it has left SYN_SENT for newstate. */
static __always_inline void resolve_pending(const struct sock *sk, bool typed, int newstate)
{
	__u64 key = (__u64)sk;
	struct event *parked = bpf_map_lookup_elem(&pending, &key);
	struct event e;

	if (!parked)
		return;
	__builtin_memcpy(&e, parked, sizeof(e));
	/* The SYN leaving, a state change and user space's final sweep may race
	 * for one attempt: only whoever removes the entry reports it. */
	if (bpf_map_delete_elem(&pending, &key))
		return;
	__sync_fetch_and_add(&pending_count, -1);
	e.lport = local_port(sk);
	if (want_outcome) {
		if (failed_only && newstate == TCP_ESTABLISHED)
			return;
		e.outcome = newstate;
		/* Every way out of SYN_SENT with an error sets sk_err before
		 * tcp_done() moves the socket to CLOSE (tcp_reset, tcp_write_err,
		 * tcp_v4_err/tcp_v6_err); a close() or disconnect by the
		 * application leaves it 0 here. */
		e.error = newstate == TCP_ESTABLISHED ? 0 : attempt_error(sk, typed);
		/* inet_hash_connect() found no free local port: tcp_v4_connect()
		 * and tcp_v6_connect() move the socket from SYN_SENT back to CLOSE
		 * before any port is set, and set no sk_err. Nothing else leaves
		 * SYN_SENT without a local port. */
		if (newstate == TCP_CLOSE && !e.error && !e.lport)
			e.error = EADDRNOTAVAIL;
		e.syn_retries = BPF_CORE_READ((const struct tcp_sock *)sk, total_retrans);
		e.latency_ns = bpf_ktime_get_ns() - e.ts_ns;
		if (count_mode)
			count_connect(&e);
	}
	if (want_events)
		submit(&e);
}

static __always_inline void on_connect(const struct sock *sk, bool typed)
{
	struct task_struct *task = typed_current_task(typed);
	struct event e = {};

	if (!task_wanted(task, &e) || !read_addresses(sk, typed, &e) || !connection_wanted(&e) ||
	    !netns_wanted(sk, typed, &e) || !container_wanted(task, &e))
		return;
	/* The attempt reached SYN_SENT: its connect() call, if any, has nothing
	 * left to report. The call's entry passed the same filters. */
	if (follow_connect_calls)
		bpf_map_delete_elem(&connect_calls, &e.tid);
	/* Up to the NUL (user space reads no further) the same bytes as
	 * bpf_get_current_comm(). Past it a renamed task may keep old bytes,
	 * which can split one name over two count keys: user space adds up
	 * keys by the text they give. */
	if (want_events || count_comm) {
		if (task)
			__builtin_memcpy(e.comm, task->comm, sizeof(e.comm));
		else
			bpf_get_current_comm(e.comm, sizeof(e.comm));
	}
	/* With --outcome an attempt is counted when it ends. */
	if (count_mode && !want_outcome) {
		count_connect(&e);
		if (!want_events)
			return;
	}
	if (want_ts || want_outcome)
		e.ts_ns = bpf_ktime_get_ns();
	if (want_lport || want_outcome) {
		__u64 key = (__u64)sk;

		if (want_outcome)
			e.outcome = TCP_SYN_SENT;
		if (bpf_map_update_elem(&pending, &key, &e, BPF_ANY) == 0) {
			__sync_fetch_and_add(&pending_count, 1);
			return;
		}
		/* No room to wait for the port or the outcome: report the attempt
		 * without them rather than not at all. */
		__sync_fetch_and_add(&pending_failures, 1);
		e.outcome = 0;
		if (count_mode && want_outcome)
			count_connect(&e);
	}
	if (want_events)
		submit(&e);
}

static __always_inline void on_set_state(const struct sock *sk, bool typed, int oldstate,
					 int newstate)
{
	if (READ_FIELD(typed, sk, sk_protocol) != IPPROTO_TCP)
		return;
	if (oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT)
		on_connect(sk, typed);
	else if (want_outcome && (oldstate == TCP_SYN_SENT || oldstate == TCP_SYN_RECV)) {
		/* SYN_SENT -> SYN_RECV is a simultaneous open (or a socket that
		 * connected to itself): still under way, it ends when it leaves
		 * SYN_RECV. Every accepted connection leaves SYN_RECV too: no
		 * lookup for those while nothing is parked. */
		if (newstate != TCP_SYN_RECV && pending_count)
			resolve_pending(sk, typed, newstate);
	} else if (want_lport && oldstate == TCP_SYN_SENT)
		/* No SYN was seen leaving (dropped by netfilter, TCP_FASTOPEN_CONNECT
		 * never written): the attempt is over, report it now. */
		resolve_pending(sk, typed, newstate);
}

TYPED_AND_RAW(inet_sock_set_state, handle_set_state,
	      on_set_state((const struct sock *)ctx[0], typed, (int)ctx[1], (int)ctx[2]))

/* ---- connect() calls that fail before SYN_SENT ----------------------------
 * The route lookup, a cgroup connect4/connect6 program and the LSM hooks can
 * all refuse a connect before the socket reaches SYN_SENT, and then
 * inet_sock_set_state never fires. Classic syscall tracepoints: their
 * programs run for connect() only (every other syscall pays only the slow
 * path the kernel takes while any syscall tracepoint is on). They read
 * memory through probe reads only, so one program serves kernels with and
 * without BTF of their own. */

/* Values >= 512 are the kernel's internal restart codes. */
#define MAX_ERRNO_REPORTED 511
#define SIN6_LEN_RFC2133 24
#define S_IFMT 00170000
#define S_IFSOCK 0140000

/* The socket behind a descriptor of the current task, NULL if it is none. */
static __always_inline const struct sock *socket_of_fd(int fd)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	const struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds = BPF_CORE_READ(fdt, fd);
	const struct file *file = NULL;
	const struct socket *sock;

	if (fd < 0 || (unsigned int)fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return NULL;
	if ((BPF_CORE_READ(file, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return NULL;
	sock = BPF_CORE_READ(file, private_data);
	return BPF_CORE_READ(sock, sk);
}

/* The destination from connect()'s own sockaddr (the socket holds none
 * yet). False for anything but an IPv4 or IPv6 address connect() could
 * take. */
static __always_inline bool read_call_destination(const void *uaddr, int len, struct event *e)
{
	struct sockaddr_in6 sa = {};

	/* Constant sizes, which the verifier needs; tcp_v6_connect() takes an
	 * address without sin6_scope_id (SIN6_LEN_RFC2133, 24 bytes). */
	if (len < (int)sizeof(struct sockaddr_in))
		return false;
	if (bpf_probe_read_user(&sa, len >= (int)sizeof(sa) ? sizeof(sa) :
				len >= SIN6_LEN_RFC2133 ? SIN6_LEN_RFC2133 :
				sizeof(struct sockaddr_in), uaddr))
		return false;
	if (sa.sin6_family == AF_INET) {
		const struct sockaddr_in *in = (const void *)&sa;

		e->family = 4;
		*(__u32 *)e->daddr = in->sin_addr.s_addr;
	} else if (sa.sin6_family == AF_INET6 && len >= SIN6_LEN_RFC2133) {
		__builtin_memcpy(e->daddr, &sa.sin6_addr, sizeof(e->daddr));
		e->family = 6;
		if (is_v4_mapped(e->daddr)) {
			*(__u32 *)e->daddr = *(__u32 *)&e->daddr[12];
			__builtin_memset(&e->daddr[4], 0, sizeof(e->daddr) - 4);
			e->family = 4;
		}
	} else {
		return false;
	}
	e->dport = bpf_ntohs(sa.sin6_port); /* sin_port is at the same offset */
	return true;
}

/* The source the socket was bound to, if it was (0 otherwise). */
static __always_inline void read_bound_source(const struct sock *sk, struct event *e)
{
	const struct sock_common *skc = &sk->__sk_common;

	if (e->family == 4) {
		*(__u32 *)e->saddr = BPF_CORE_READ(skc, skc_rcv_saddr);
	} else {
		struct in6_addr saddr = BPF_CORE_READ(skc, skc_v6_rcv_saddr);

		__builtin_memcpy(e->saddr, &saddr, sizeof(e->saddr));
	}
	e->lport = local_port(sk);
}

/* Task and destination filters only: the rest need the socket, looked up
 * if the call fails. */
SEC("tracepoint/syscalls/sys_enter_connect")
int handle_connect_enter(struct trace_event_raw_sys_enter *ctx)
{
	struct connect_call call = {};

	if (!task_wanted(NULL, &call.e) ||
	    !read_call_destination((const void *)ctx->args[1], ctx->args[2], &call.e) ||
	    !connection_wanted(&call.e))
		return 0;
	call.fd = ctx->args[0];
	call.e.ts_ns = bpf_ktime_get_ns();
	if (bpf_map_update_elem(&connect_calls, &call.e.tid, &call, BPF_ANY))
		__sync_fetch_and_add(&connect_call_failures, 1);
	return 0;
}

/* Whether connect() failed an attempt, not the call itself (an address of
 * the wrong family or out of reach, a socket already connected or
 * connecting). EINVAL is an attempt's: addresses too short were never
 * followed, and a blackhole route gives EINVAL. */
static __always_inline bool attempt_failed(long ret)
{
	long err = -ret;

	return ret < 0 && err <= MAX_ERRNO_REPORTED && err != EAFNOSUPPORT &&
	       err != EFAULT && err != EISCONN && err != EALREADY && err != EINPROGRESS &&
	       err != EBADF && err != ENOTSOCK;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int handle_connect_exit(struct trace_event_raw_sys_exit *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct connect_call *found = bpf_map_lookup_elem(&connect_calls, &tid);
	struct connect_call call;
	const struct sock *sk;

	if (!found)
		return 0;
	__builtin_memcpy(&call, found, sizeof(call));
	/* Only this thread adds or removes its key. */
	bpf_map_delete_elem(&connect_calls, &tid);
	if (!attempt_failed(ctx->ret))
		return 0;
	sk = socket_of_fd(call.fd);
	if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP ||
	    !netns_wanted(sk, false, &call.e) || !container_wanted(NULL, &call.e))
		return 0;
	read_bound_source(sk, &call.e);
	if (want_events || count_comm)
		bpf_get_current_comm(call.e.comm, sizeof(call.e.comm));
	if (want_outcome) {
		call.e.outcome = OUTCOME_NO_SYN;
		call.e.error = -ctx->ret;
		call.e.latency_ns = bpf_ktime_get_ns() - call.e.ts_ns;
	}
	if (count_mode)
		count_connect(&call.e);
	if (want_events)
		submit(&call.e);
	return 0;
}

/* Resolves the parked attempt whose packet this is, if any. Runs for every
 * packet sent or dropped: bail out before any map lookup while no attempt
 * is waiting for its port. */
static __always_inline void resolve_packet_owner(const struct sk_buff *skb, bool typed)
{
	const struct sock *sk;

	if (!pending_count)
		return;
	sk = READ_FIELD(typed, skb, sk);
	if (sk)
		resolve_pending(sk, typed, 0);
}

TYPED_AND_RAW(net_dev_queue, handle_xmit,
	      resolve_packet_owner((const struct sk_buff *)ctx[0], typed))

/* With --outcome: a packet of a parked attempt (its SYN) dropped on this
 * host is noted on the attempt, with the kernel's reason where it gives one
 * (the tracepoint's third argument, from Linux 5.17). */
static __always_inline void note_drop(const struct sk_buff *skb, bool typed, __u32 reason)
{
	const struct sock *sk;
	struct event *parked;
	__u64 key;

	if (!pending_count)
		return;
	sk = READ_FIELD(typed, skb, sk);
	if (!sk)
		return;
	key = (__u64)sk;
	parked = bpf_map_lookup_elem(&pending, &key);
	if (parked) {
		parked->drops++;
		parked->drop_reason = reason;
	}
}

/* A SYN that never reaches a device (dropped by netfilter, or queued for a
 * neighbour that never answers) is freed here: with -L, report the attempt
 * now, not when the connect times out minutes later. */
static __always_inline void on_drop(const struct sk_buff *skb, bool typed, __u32 reason)
{
	if (want_outcome)
		note_drop(skb, typed, reason);
	else
		resolve_packet_owner(skb, typed);
}

/* ctx[2] exists only where the kernel has drop reasons; the check is a
 * constant after CO-RE relocation, so elsewhere the read is dead code the
 * verifier never sees. */
#define DROP_REASON(ctx)                                                                     \
	(bpf_core_enum_value_exists(enum skb_drop_reason, SKB_DROP_REASON_NOT_SPECIFIED) ?     \
		 (__u32)(ctx)[2] : 0)

TYPED_AND_RAW(kfree_skb, handle_drop,
	      on_drop((const struct sk_buff *)ctx[0], typed, DROP_REASON(ctx)))

/* -d where the whole packet cannot be read (see dns_dynptr.bpf.c for where
 * it can): the headers and the answer are read from the linear area, which
 * holds all of a loopback or veth answer. What lies in page fragments is
 * counted, not guessed at. */
static __always_inline void capture_linear_answer(const struct sk_buff *skb, bool typed)
{
	__u16 proto = bpf_ntohs(READ_FIELD(typed, skb, protocol));
	__u16 payload_len = 0;
	struct dns_event *e;
	__u32 len;
	int offset;

	if (proto != ETH_P_IP && proto != ETH_P_IPV6)
		return;
	offset = dns_payload_offset(skb, typed, proto, NULL, &payload_len);
	if (offset == NOT_DNS)
		return;
	if (offset == HEADERS_PAGED) {
		__sync_fetch_and_add(&dns_uncheckable, 1);
		return;
	}
	len = payload_len;
	/* The first fragment of a larger datagram holds only part of it: like
	 * the dynptr path, capture that part (user space counts it malformed). */
	if (len > READ_FIELD(typed, skb, len) - offset)
		len = READ_FIELD(typed, skb, len) - offset;
	if (len > linear_length(skb, typed) - offset) {
		__sync_fetch_and_add(&dns_unreadable, 1);
		return;
	}
	len = capture_length(len);
	e = reserve_answer(&dns_events, &lost_dns_events, payload_len, len);
	if (!e)
		return;
	if (bpf_probe_read_kernel(e->payload, len, READ_FIELD(typed, skb, data) + offset))
		e->len = 0;
	bpf_ringbuf_submit(e, ringbuf_flags(&dns_events));
}

/* Every received packet of every network namespace passes here, loopback
 * included, which is what lets -d see answers from local stub resolvers. */
TYPED_AND_RAW(netif_receive_skb, handle_receive_linear,
	      capture_linear_answer((const struct sk_buff *)ctx[0], typed))

/* Only the ring buffer carries dns_event, and ring buffers have no value
 * type: this pointer puts the struct into BTF, where tests check its mirror;
 * likewise the enum of outcome codes. */
const struct dns_event *btf_anchor_dns_event __attribute__((unused));
const enum outcome_code btf_anchor_outcome_code __attribute__((unused));

char LICENSE[] SEC("license") = "GPL";
