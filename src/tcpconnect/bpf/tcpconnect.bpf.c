// SPDX-License-Identifier: GPL-2.0
/*
 * Kernel side of tcpconnect, built on stable tracepoints (no kprobes) and
 * CO-RE reads, so it needs neither kernel headers nor a compiler on the
 * traced machine. One mode has a faster alternative on a kernel function
 * where BPF trampolines exist: -L's handle_port_chosen.
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
 *
 * This file holds the programs and what each hook does; the concerns they
 * share are headers: counting.bpf.h (-c, --metrics), connect_capture.bpf.h
 * (reading and filtering an attempt, the events ring), exe_path.bpf.h (the
 * executable's path, sent once per executable), attempt_state.bpf.h
 * (the `pending` table), answers.bpf.h (the ICMP errors and RSTs that end
 * attempts), connect_calls.bpf.h (connect() calls that fail before
 * SYN_SENT) and dns_packet.bpf.h (finding a DNS answer in a packet, shared
 * with dns_dynptr.bpf.c).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "tcpconnect.h"
#include "kernel_read.bpf.h"
#include "dns_packet.bpf.h"
#include "counting.bpf.h"
#include "connect_capture.bpf.h"
#include "exe_path.bpf.h"
#include "attempt_state.bpf.h"
#include "connect_calls.bpf.h"

/* Read by user space through the mmapped .bss. */
__u64 lost_dns_events = 0;
/* -d on kernels whose tracing programs can read only the linear area. */
__u64 dns_unreadable = 0;
__u64 dns_uncheckable = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} dns_events SEC(".maps");

/* port_set: called once the local port is chosen (handle_port_chosen), so
 * -L needs no parking. */
static __always_inline void on_connect(const struct sock *sk, bool typed, bool slots,
				       bool port_set)
{
	struct task_struct *task = typed_current_task(typed);
	/* The event as a parked attempt holds it: see struct attempt. */
	struct attempt attempt = {};
	struct event *e = &attempt.report;
	__u64 started = 0;
	__u32 filter;

	filter = task_filter(task, e);
	if (!filter && !read_addresses(sk, typed, e))
		return;
	filter = filter ?: connection_filter(e);
	/* The attempt reached SYN_SENT: its connect() call, if any, has nothing
	 * left to report, whatever the filters below say. A call is followed
	 * only once it passed the filters above. */
	if (!filter && follow_connect_calls) {
		if (want_ts || want_outcome)
			started = connect_call_start(e->tid);
		bpf_map_delete_elem(&connect_calls, &e->tid);
	}
	filter = filter ?: source_filter(e);
	filter = filter ?: netns_filter(sk, typed, e);
	filter = filter ?: container_filter(task, e);
	if (filter) {
		count_filtered(filter);
		return;
	}
	/* Up to the NUL (user space reads no further) the same bytes as
	 * bpf_get_current_comm(). Past it a renamed task may keep old bytes,
	 * which can split one name over two count keys: user space adds up
	 * keys by the text they give. */
	if (want_events || count_comm) {
		if (task)
			__builtin_memcpy(e->comm, task->comm, sizeof(e->comm));
		else
			bpf_get_current_comm(e->comm, sizeof(e->comm));
	}
	if (want_lineage)
		read_lineage(e);
	if (want_exe)
		read_exe_key(e);
	/* With --outcome an attempt is counted when it ends. */
	if (count_mode && !want_outcome) {
		count_connect(e);
		if (!want_events)
			return;
	}
	/* From the connect() call's start where one was followed: the clock
	 * was read then, and the attempt's latency then covers all of the
	 * call, as it does for a call that fails before SYN_SENT. */
	if (want_ts || want_outcome)
		e->ts_ns = started ?: bpf_ktime_get_ns();
	if (want_lport && port_set)
		e->lport = local_port(sk);
	else if (want_lport || want_outcome) {
		if (want_outcome)
			e->outcome = TCP_SYN_SENT;
		if (park(sk, typed, slots, &attempt)) {
			__sync_fetch_and_add(&pending_count, 1);
			return;
		}
		/* No room to wait for the port or the outcome: report the attempt
		 * without them rather than not at all. */
		__sync_fetch_and_add(&pending_failures, 1);
		e->outcome = 0;
		if (count_mode && want_outcome)
			count_connect(e);
	}
	if (want_events)
		submit(e);
}

static __always_inline void on_set_state(const struct sock *sk, bool typed, bool slots,
					 int oldstate, int newstate)
{
	if (READ_FIELD(typed, sk, sk_protocol) != IPPROTO_TCP)
		return;
	if (oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT) {
		/* A socket parks one attempt at a time. One still parked as its
		 * socket connects again ended unseen (a skipped run): reported
		 * as such, not written over. Before on_connect's frame, whose
		 * attempt leaves no stack for a second event. */
		if ((want_lport || want_outcome) && pending_count)
			resolve_pending(sk, typed, slots, OUTCOME_END_UNSEEN);
		on_connect(sk, typed, slots, false);
	} else if (want_outcome && (oldstate == TCP_SYN_SENT || oldstate == TCP_SYN_RECV)) {
		/* SYN_SENT -> SYN_RECV is a simultaneous open (or a socket that
		 * connected to itself): still under way, it ends when it leaves
		 * SYN_RECV. Every accepted connection leaves SYN_RECV too: no
		 * lookup for those while nothing is parked. */
		if (newstate != TCP_SYN_RECV && pending_count)
			resolve_pending(sk, typed, slots, newstate);
	} else if (want_lport && oldstate == TCP_SYN_SENT)
		/* No SYN was seen leaving (dropped by netfilter, TCP_FASTOPEN_CONNECT
		 * never written): the attempt is over, report it now. */
		resolve_pending(sk, typed, slots, newstate);
}

PARKING_HOOK(inet_sock_set_state, handle_set_state,
	     on_set_state((const struct sock *)ctx[0], typed, slots, (int)ctx[1], (int)ctx[2]))

/* -L where the kernel loads fexit programs on both functions (probed at
 * start: libbpf.py fexit_refusal): the attempt is seen once its local port is chosen, as
 * inet_hash_connect() or inet6_hash_connect() returns inside connect() (and
 * io_uring connect, and sendto(MSG_FASTOPEN)), in the connecting task's
 * context, after tcp_v4_connect()/tcp_v6_connect() moved the socket to
 * SYN_SENT. One program run per attempt replaces handle_set_state's two
 * and the parking in `pending` until the SYN leaves (handle_xmit,
 * handle_drop, handle_destroy: four more runs). An attempt for which no
 * free port was found is seen here too, with local port 0, as the
 * fallback reports it. */
static __always_inline void on_port_chosen(const struct sock *sk)
{
	if (sk->sk_protocol == IPPROTO_TCP)
		on_connect(sk, true, false, true);
}

SEC("fexit/inet_hash_connect")
int BPF_PROG(handle_port_chosen, void *death_row, const struct sock *sk)
{
	on_port_chosen(sk);
	return 0;
}

SEC("fexit/inet6_hash_connect")
int BPF_PROG(handle_port_chosen6, void *death_row, const struct sock *sk)
{
	on_port_chosen(sk);
	return 0;
}

/* With want_exe: the path of a wanted attempt's executable, the first time
 * (exe_path.bpf.h). A program of its own on the same tracepoint, attached
 * before handle_set_state (programs on one tracepoint run in attach order),
 * so the path is in the ring before the first event that carries its key:
 * with -L or --outcome handle_set_state's stack is full, which leaves no
 * room for the walk's frame. A path not sent yet is sent only if the
 * filters pass the connect (applied again, without counting: handle_set_state
 * counts), so that an excluded connect sends no path; a path already sent,
 * nearly every connect's case, is known before any filter runs. */
static __always_inline void exe_of_connect(const struct sock *sk, bool typed, int oldstate,
					   int newstate)
{
	const struct dentry *dentry;
	struct task_struct *task;
	struct event e = {};
	__u8 deleted;

	if (oldstate != TCP_CLOSE || newstate != TCP_SYN_SENT ||
	    READ_FIELD(typed, sk, sk_protocol) != IPPROTO_TCP)
		return;
	dentry = read_exe_key(&e);
	if (!dentry)
		return;
	deleted = exe_unlinked(dentry);
	if (exe_path_sent(&e, deleted))
		return;
	task = typed_current_task(typed);
	if (task_filter(task, &e) || !read_addresses(sk, typed, &e) || connection_filter(&e) ||
	    source_filter(&e) || netns_filter(sk, typed, &e) || container_filter(task, &e))
		return;
	send_new_exe_path(&e, deleted);
}

TYPED_AND_RAW(inet_sock_set_state, handle_exe_path,
	      exe_of_connect((const struct sock *)ctx[0], typed, (int)ctx[1], (int)ctx[2]))

/* connect() calls that fail before SYN_SENT: see connect_calls.bpf.h.
 * Task and destination filters only: the rest need the socket, looked up
 * if the call fails. */
SEC("tracepoint/syscalls/sys_enter_connect")
int handle_connect_enter(struct trace_event_raw_sys_enter *ctx)
{
	struct connect_call call = {};

	/* Not counted as filtered here: most calls reach SYN_SENT, where they
	 * are, and which would fail first is not known yet. */
	if (task_filter(NULL, &call.e) ||
	    !read_call_destination((const void *)ctx->args[1], ctx->args[2], &call.e) ||
	    connection_filter(&call.e))
		return 0;
	call.fd = ctx->args[0];
	if (want_ts || want_outcome)
		call.e.ts_ns = bpf_ktime_get_ns();
	if (bpf_map_update_elem(&connect_calls, &call.e.tid, &call, BPF_ANY))
		__sync_fetch_and_add(&connect_call_failures, 1);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int handle_connect_exit(struct trace_event_raw_sys_exit *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct connect_call *found = bpf_map_lookup_elem(&connect_calls, &tid);
	struct connect_call call;
	const struct sock *sk;
	__u32 filter;

	if (!found)
		return 0;
	__builtin_memcpy(&call, found, sizeof(call));
	/* Only this thread adds or removes its key. */
	bpf_map_delete_elem(&connect_calls, &tid);
	if (!attempt_failed(ctx->ret))
		return 0;
	sk = socket_of_fd(call.fd);
	if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	read_bound_source(sk, &call.e);
	filter = source_filter(&call.e);
	filter = filter ?: netns_filter(sk, false, &call.e);
	filter = filter ?: container_filter(NULL, &call.e);
	if (filter) {
		count_filtered(filter);
		return 0;
	}
	if (want_events || count_comm)
		bpf_get_current_comm(call.e.comm, sizeof(call.e.comm));
	if (want_lineage)
		read_lineage(&call.e);
	if (want_exe) {
		const struct dentry *dentry = read_exe_key(&call.e);

		if (dentry)
			send_new_exe_path(&call.e, exe_unlinked(dentry));
	}
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

/* Every end of an attempt moves its socket out of SYN_SENT before the
 * socket can be destroyed, so a parked attempt whose socket is destroyed
 * ended unseen: the kernel skipped the program run that would have seen it
 * (a nested run on one CPU, counted in the program's recursion_misses).
 * Reported now, as such, rather than as pending at exit or never. */
PARKING_HOOK(tcp_destroy_sock, handle_destroy,
	     if (pending_count) resolve_pending((const struct sock *)ctx[0], typed, slots,
						OUTCOME_END_UNSEEN))

PARKING_HOOK(net_dev_queue, handle_xmit,
	     resolve_packet_owner((const struct sk_buff *)ctx[0], typed, slots))

/* A SYN that never reaches a device (dropped by netfilter, or queued for a
 * neighbour that never answers) is freed here: with -L, report the attempt
 * now, not when the connect times out minutes later. */
static __always_inline void on_drop(const struct sk_buff *skb, bool typed, bool slots,
				    __u32 reason)
{
	if (want_outcome)
		note_drop(skb, typed, slots, reason);
	else
		resolve_packet_owner(skb, typed, slots);
}

/* ctx[2] exists only where the kernel has drop reasons; the check is a
 * constant after CO-RE relocation, so elsewhere the read is dead code the
 * verifier never sees. */
#define DROP_REASON(ctx)                                                                     \
	(bpf_core_enum_value_exists(enum skb_drop_reason, SKB_DROP_REASON_NOT_SPECIFIED) ?     \
		 (__u32)(ctx)[2] : 0)

PARKING_HOOK(kfree_skb, handle_drop,
	     on_drop((const struct sk_buff *)ctx[0], typed, slots, DROP_REASON(ctx)))

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

/* With --outcome: an ICMP error or a RST answering a parked attempt (see
 * answers.bpf.h). Every received packet passes here, so while nothing is
 * parked it costs one load. */
TYPED_AND_RAW(netif_receive_skb, handle_receive_answer,
	      if (pending_count) note_answer((const struct sk_buff *)ctx[0], typed))

/* Only the ring buffer carries dns_event, and ring buffers have no value
 * type: this pointer puts the struct into BTF, where tests check its mirror;
 * likewise the enum of outcome codes. */
const struct dns_event *btf_anchor_dns_event __attribute__((unused));
const struct exe_record *btf_anchor_exe_record __attribute__((unused));
const enum outcome_code btf_anchor_outcome_code __attribute__((unused));
const enum answer_kind btf_anchor_answer_kind __attribute__((unused));
const enum filter_kind btf_anchor_filter_kind __attribute__((unused));

char LICENSE[] SEC("license") = "GPL";
