/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Who connects where: the attempt's task, addresses and namespaces read from
 * the socket and the current task, the filters that decide whether it is
 * wanted, and its delivery through the events ring.
 */
#ifndef CONNECT_CAPTURE_BPF_H
#define CONNECT_CAPTURE_BPF_H

#include "address_filters.bpf.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

/* Filters, written by user space before load. */
const volatile __u32 filter_pid = 0;
const volatile __u32 filter_uid = 0;
const volatile bool filter_by_uid = false;
const volatile __u16 filter_family = 0; /* 0, 4 or 6 */
const volatile bool filter_by_port = false;
const volatile bool filter_by_cgroup_map = false;
const volatile bool filter_by_mntns_map = false;
const volatile __u64 filter_cgroup_id = 0;
const volatile __u32 filter_netns = 0; /* network namespace inode, --netns */
/* With count_mode: whether each connect is also sent as an event (--metrics
 * beside the rows). */
const volatile bool want_events = true;
/* Details filled only when printed or filtered on: each costs the traced
 * connect tens of nanoseconds. */
const volatile bool want_ts = false;
const volatile bool want_ids = false; /* cgroup, mount and network namespace ids */
const volatile bool want_lineage = false; /* ppid, pcomm, ns_pid, ns_tid */
/* The ports -P and --exclude-port leave, one bit each: a plain load where a
 * hash lookup costs ~40 ns. */
const volatile __u64 port_bitmap[65536 / 64] = {};
/* --comm: the names in comm_filter, NUL-padded to 16 bytes. */
const volatile bool filter_by_comm = false;

/* Read by user space through the mmapped .bss. */
__u64 lost_events = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

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

/* Sized and filled by user space before attach. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, char[TASK_COMM_LEN]);
	__type(value, __u8);
} comm_filter SEC(".maps");

/* Attempts each filter removed (enum filter_kind), read by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FILTERED_KINDS);
	__type(key, __u32);
	__type(value, __u64);
} filtered SEC(".maps");

static __always_inline void count_filtered(__u32 filter)
{
	__u64 *n = bpf_map_lookup_elem(&filtered, &filter);

	/* Atomic although per CPU: the syscall exit program and a socket's
	 * state change (from a softirq) may count on one CPU at once. */
	if (n)
		__sync_fetch_and_add(n, 1);
}

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

/* A task's id as its own PID namespace numbers it: the last of
 * pid->numbers[], at pid->level. The index varies, so the address is made
 * from relocated offsets rather than by a CO-RE access chain. */
static __always_inline __u32 pid_in_own_namespace(const struct pid *pid)
{
	unsigned int level = BPF_CORE_READ(pid, level);
	const void *upid;

	/* MAX_PID_NS_LEVEL is 32; the bound keeps the address in the struct. */
	if (level > 32)
		return 0;
	upid = (const void *)pid + bpf_core_field_offset(struct pid, numbers) +
	       level * bpf_core_type_size(struct upid);
	return BPF_CORE_READ((const struct upid *)upid, nr);
}

/* Who the connecting task is beyond its ids: its parent and the ids its
 * own PID namespace gives it. Probe reads on any kernel: a few per
 * connect, only when asked for. */
static __always_inline void read_lineage(struct event *e)
{
	const struct task_struct *task = (const void *)bpf_get_current_task();
	const struct task_struct *parent = BPF_CORE_READ(task, real_parent);

	e->ppid = BPF_CORE_READ(parent, tgid);
	bpf_probe_read_kernel(e->pcomm, sizeof(e->pcomm), &parent->comm);
	e->ns_tid = pid_in_own_namespace(BPF_CORE_READ(task, thread_pid));
	e->ns_pid = pid_in_own_namespace(BPF_CORE_READ(task, group_leader, thread_pid));
}

/* Each *_filter below fills its part of *e and returns the filter that
 * rejects the attempt, FILTERED_NONE when none does. */

static __always_inline __u32 task_filter(const struct task_struct *task, struct event *e)
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
		return FILTERED_PID;
	if (filter_by_uid && e->uid != filter_uid)
		return FILTERED_UID;
	if (filter_by_comm) {
		/* Zeroed first: from Linux 5.x to 6.x the helper copies with
		 * strscpy, which stops at the NUL and leaves the rest as it was
		 * (older kernels padded with strncpy), and the key is all 16. */
		char comm[TASK_COMM_LEN] = {};

		bpf_get_current_comm(comm, sizeof(comm));
		if (!bpf_map_lookup_elem(&comm_filter, comm))
			return FILTERED_COMM;
	}
	return FILTERED_NONE;
}

/* Checked after the cheaper task and connection filters, so a connect that
 * -P or -4/-6 rejects does not pay for these lookups. */
static __always_inline __u32 container_filter(const struct task_struct *task, struct event *e)
{
	if (want_ids || count_cgroup || filter_cgroup_id || filter_by_cgroup_map) {
		e->cgroup_id = bpf_get_current_cgroup_id();
		if (filter_cgroup_id && e->cgroup_id != filter_cgroup_id)
			return FILTERED_CGROUP;
		if (filter_by_cgroup_map && !bpf_map_lookup_elem(&cgroup_map, &e->cgroup_id))
			return FILTERED_CGROUP;
	}
	if (want_ids || filter_by_mntns_map) {
		if (task) {
			e->mntns_id = task->nsproxy->mnt_ns->ns.inum;
		} else {
			struct task_struct *current = (void *)bpf_get_current_task();

			e->mntns_id = BPF_CORE_READ(current, nsproxy, mnt_ns, ns.inum);
		}
		if (filter_by_mntns_map && !bpf_map_lookup_elem(&mntns_map, &e->mntns_id))
			return FILTERED_MNTNS;
	}
	return FILTERED_NONE;
}

/* The namespace of the socket, not of the task: a task may connect through
 * a socket made in another namespace (setns after socket(), a socket passed
 * over a unix socket), and addresses mean something only in the socket's. */
static __always_inline __u32 netns_filter(const struct sock *sk, bool typed, struct event *e)
{
	if (want_ids || filter_netns) {
		const struct net *net = READ_FIELD(typed, &sk->__sk_common, skc_net.net);

		e->netns = READ_FIELD(typed, net, ns.inum);
		if (filter_netns && e->netns != filter_netns)
			return FILTERED_NETNS;
	}
	return FILTERED_NONE;
}

/* What the destination alone decides: known at connect()'s entry. */
static __always_inline __u32 connection_filter(const struct event *e)
{
	if (filter_family && e->family != filter_family)
		return FILTERED_FAMILY;
	if (filter_by_port && !(port_bitmap[e->dport / 64] & (1ULL << (e->dport % 64))))
		return FILTERED_PORT;
	if (!destination_wanted(e))
		return FILTERED_DADDR;
	return FILTERED_NONE;
}

static __always_inline __u32 source_filter(const struct event *e)
{
	return source_wanted(e) ? FILTERED_NONE : FILTERED_SADDR;
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

#endif
