/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Attempts waiting in the kernel: for their local port (-L: it is chosen
 * just after SYN_SENT, and known when the SYN leaves) or for how they end
 * (--outcome: when the socket leaves SYN_SENT), parked in `pending` by socket.
 *
 * A hash table, not socket-local storage (BPF_MAP_TYPE_SK_STORAGE, open to
 * tp_btf programs from Linux 5.11): measured on 6.18, storage made and
 * removed for each attempt cost the traced connect about twice what the
 * table does, and no sweep at exit could list the storage of every network
 * namespace (see docs/internals.md, "Where attempts wait").
 */
#ifndef ATTEMPT_STATE_BPF_H
#define ATTEMPT_STATE_BPF_H

#include "answers.bpf.h"

#define EADDRNOTAVAIL 99

const volatile bool want_lport = false;
const volatile bool want_outcome = false;
/* --failed: attempts that end ESTABLISHED are neither sent nor counted. */
const volatile bool failed_only = false;
/* handle_receive_answer is attached: attempts that fail get their answer. */
const volatile bool want_answers = false;

/* Read by user space through the mmapped .bss. */
__u64 pending_failures = 0;
__s64 pending_count = 0;

/* A waiting attempt: the event it will be reported as, as filled when it
 * began and added to while it waits (drops). What the kernel side keeps
 * only for itself while the attempt waits goes after it, off the wire
 * (user space reads a parked attempt's leading event only). The event gets
 * its end (local port, outcome, error, answer, latency) when the attempt
 * is resolved. */
struct attempt {
	struct event report;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct attempt);
} pending SEC(".maps");

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

/* resolve_pending()'s newstate when the socket has not changed state: a
 * packet of the attempt (its SYN) left or was dropped, so its local port is
 * set. No TCP state is 0. */
#define PACKET_SEEN 0

/* Resolves a parked attempt of sk, if any, now that its local port is set
 * (newstate PACKET_SEEN), (with --outcome) it has left SYN_SENT for
 * newstate, or its socket is being destroyed (OUTCOME_END_UNSEEN). */
static __always_inline void resolve_pending(const struct sock *sk, bool typed, int newstate)
{
	__u64 key = (__u64)sk;
	struct attempt *parked = bpf_map_lookup_elem(&pending, &key);
	struct event e;

	if (!parked)
		return;
	__builtin_memcpy(&e, &parked->report, sizeof(e));
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
		else if (e.error && want_answers)
			take_answer(&e);
		e.syn_retries = BPF_CORE_READ((const struct tcp_sock *)sk, total_retrans);
		e.latency_ns = bpf_ktime_get_ns() - e.ts_ns;
		if (count_mode)
			count_connect(&e);
	}
	if (want_events)
		submit(&e);
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
		resolve_pending(sk, typed, PACKET_SEEN);
}

/* With --outcome: a packet of a parked attempt (its SYN) dropped on this
 * host is noted on the attempt, with the kernel's reason where it gives one
 * (the tracepoint's third argument, from Linux 5.17). */
static __always_inline void note_drop(const struct sk_buff *skb, bool typed, __u32 reason)
{
	const struct sock *sk;
	struct attempt *parked;
	__u64 key;

	if (!pending_count)
		return;
	sk = READ_FIELD(typed, skb, sk);
	if (!sk)
		return;
	key = (__u64)sk;
	parked = bpf_map_lookup_elem(&pending, &key);
	if (parked) {
		parked->report.drops++;
		parked->report.drop_reason = reason;
	}
}

#endif
