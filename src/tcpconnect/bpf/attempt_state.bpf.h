/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Attempts waiting in the kernel: for their local port (-L: it is chosen
 * just after SYN_SENT, and known when the SYN leaves) or for how they end
 * (--outcome: when the socket leaves SYN_SENT), parked by socket.
 *
 * Where the kernel has BPF's compare-and-exchange (Linux 5.12, probed by
 * user space: libbpf.py cmpxchg_refusal), an attempt waits in `slots`, an
 * array indexed by a hash of its socket, claimed and freed with one
 * instruction each; it goes to the hash table `pending` only when its slot
 * is held by another socket's attempt. Elsewhere `pending` alone is used.
 * Under TCG the table's allocation and bucket locks made --outcome's
 * handle_set_state cost 1.4 times what the slot does (docs/performance.md).
 * Not socket-local storage (BPF_MAP_TYPE_SK_STORAGE, open to tp_btf
 * programs from Linux 5.11): made and removed for each attempt it cost the
 * traced connect about twice what the table does, and no sweep at exit
 * could list the storage of every network namespace (see
 * docs/internals.md, "Where attempts wait").
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

/* Attempts in `pending` (pending_count counts those in slots too): while it
 * is 0, the table is not looked in. */
__s64 table_count = 0;

/* The number of slots, a power of two, set by user space before load. */
const volatile __u32 slot_count = 1;

struct slot {
	/* The socket (sock_id) whose attempt waits here; 0 while free; the
	 * socket's id with WRITING set while its attempt is written in. */
	__u64 owner;
	struct attempt attempt;
};

/* Mapped by user space for the sweep at exit. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct slot);
} slots SEC(".maps");

/* A socket as a number. The verifier allows no arithmetic on a tp_btf
 * program's typed pointer and refuses to store it into a map value, but
 * makes the difference of two pointers a number: the socket's distance from
 * a variable of this object, the same in every program of a run. A raw_tp
 * program's socket is a number already. */
static __always_inline __u64 sock_id(const struct sock *sk, bool typed)
{
	if (typed)
		return (const char *)sk - (const char *)&slot_count;
	return (__u64)sk;
}

/* No socket's id has its lowest bit set: both pointers are at least 4-byte
 * aligned. A slot's owner with it set is a slot being written, which runs
 * looking for that socket's attempt do not find. */
#define WRITING 1

/* Sockets are slab objects a few KiB apart: a multiplicative hash spreads
 * them over the slots. */
static __always_inline struct slot *slot_of(__u64 id)
{
	__u32 index = (__u32)((id * 0x9E3779B97F4A7C15ULL) >> 32) & (slot_count - 1);

	return bpf_map_lookup_elem(&slots, &index);
}

/* Parks a new attempt of sk; false if there is no room. Its socket has none
 * parked (on_set_state reports one first), and a slot or entry that another
 * run holds for it is no room, not something to write over. */
static __always_inline bool park(const struct sock *sk, bool typed, bool slots,
				 const struct attempt *a)
{
	__u64 key = (__u64)sk;

	if (slots) {
		__u64 id = sock_id(sk, typed);
		struct slot *slot = slot_of(id);

		/* Claimed, written, then published by a second exchange: every
		 * BPF atomic that fetches is fully ordered, so the attempt's
		 * stores come before it. Most runs that look for this attempt
		 * come after the SYN it is about to send, or take the socket's
		 * lock; one that does neither (a clone of an earlier attempt's
		 * SYN freed late on another CPU) finds no attempt rather than
		 * half of one. */
		if (slot && __sync_val_compare_and_swap(&slot->owner, 0, id | WRITING) == 0) {
			__builtin_memcpy(&slot->attempt, a, sizeof(*a));
			__sync_val_compare_and_swap(&slot->owner, id | WRITING, id);
			return true;
		}
	}
	if (bpf_map_update_elem(&pending, &key, a, BPF_NOEXIST))
		return false;
	__sync_fetch_and_add(&table_count, 1);
	return true;
}

/* sk's slot while it holds sk's published attempt, else NULL. A plain load
 * turns away the slots of other sockets without taking their cache line; a
 * match is read again with an exchange that changes nothing, which orders
 * the reads of the attempt that follow after it (on arm64 they could
 * otherwise pass the owner's load and see what the writer had not yet
 * published). */
static __always_inline struct slot *own_slot(const struct sock *sk, bool typed, __u64 *id)
{
	struct slot *slot;

	*id = sock_id(sk, typed);
	slot = slot_of(*id);
	if (slot && slot->owner == *id &&
	    __sync_val_compare_and_swap(&slot->owner, *id, *id) == *id)
		return slot;
	return NULL;
}

/* The parked attempt of sk, still parked, for adding to it; NULL if none.
 * (If the attempt ends and another socket's takes its slot between this
 * lookup and the caller's writes, those land on the other attempt: a drop
 * noted on the wrong attempt, in a window of a few instructions.) */
static __always_inline struct attempt *parked_attempt(const struct sock *sk, bool typed,
							bool slots)
{
	__u64 key = (__u64)sk;

	if (slots) {
		__u64 id;
		struct slot *slot = own_slot(sk, typed, &id);

		if (slot)
			return &slot->attempt;
	}
	if (!table_count)
		return NULL;
	return bpf_map_lookup_elem(&pending, &key);
}

/* Takes sk's parked attempt out into *e: true for the one program run that
 * does (the SYN leaving, a state change, the socket's destruction and user
 * space's final sweep may race for one attempt; only whoever frees it
 * reports it). */
static __always_inline bool unpark(const struct sock *sk, bool typed, bool slots,
				   struct event *e)
{
	__u64 key = (__u64)sk;
	struct attempt *parked;

	if (slots) {
		__u64 id;
		struct slot *slot = own_slot(sk, typed, &id);

		if (slot) {
			/* Copied while still held: once freed, another socket's
			 * attempt may be written over it. */
			__builtin_memcpy(e, &slot->attempt.report, sizeof(*e));
			return __sync_val_compare_and_swap(&slot->owner, id, 0) == id;
		}
	}
	if (!table_count)
		return false;
	parked = bpf_map_lookup_elem(&pending, &key);
	if (!parked)
		return false;
	__builtin_memcpy(e, &parked->report, sizeof(*e));
	if (bpf_map_delete_elem(&pending, &key))
		return false;
	__sync_fetch_and_add(&table_count, -1);
	return true;
}

/* The hooks that park or resolve attempts, each as four programs: NAME and
 * NAME_raw (see TYPED_AND_RAW) with the table alone, NAME_slots and
 * NAME_slots_raw with the slots first. Only the latter two hold the
 * compare-and-exchange, which kernels before 5.12 refuse even in code no
 * path reaches (its immediate is a reserved field of their BPF_STX,
 * checked before the verifier walks the program). `call` sees `typed` and
 * `slots`; user space loads one of the four. */
#define PARKING_HOOK_PROGRAM(kind, hook, name, is_typed, has_slots, call)                      \
	SEC(kind "/" #hook)                                                                     \
	int name(__u64 *ctx)                                                                    \
	{                                                                                       \
		const bool typed = is_typed, slots = has_slots;                                 \
		call;                                                                           \
		return 0;                                                                       \
	}
#define PARKING_HOOK(hook, name, call)                                                        \
	PARKING_HOOK_PROGRAM("tp_btf", hook, name, true, false, call)                           \
	PARKING_HOOK_PROGRAM("raw_tp", hook, name##_raw, false, false, call)                    \
	PARKING_HOOK_PROGRAM("tp_btf", hook, name##_slots, true, true, call)                    \
	PARKING_HOOK_PROGRAM("raw_tp", hook, name##_slots_raw, false, true, call)

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

/* sk as a tcp_sock whose fields are plain loads, in a tp_btf program whose
 * socket is the tracepoint's own argument (one helper call, Linux 5.9+);
 * NULL elsewhere (raw_tp programs, a socket found through a packet), where
 * TCP_FIELD reads each field with a probe read instead. */
static __always_inline const struct tcp_sock *typed_tcp_sock(const struct sock *sk,
							     bool typed_argument)
{
	if (typed_argument && bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_skc_to_tcp_sock))
		return bpf_skc_to_tcp_sock((void *)sk);
	return NULL;
}

#define TCP_FIELD(tp, sk, field)                                                              \
	((tp) ? (tp)->field : BPF_CORE_READ((const struct tcp_sock *)(sk), field))

/* resolve_pending()'s newstate when the socket has not changed state: a
 * packet of the attempt (its SYN) left or was dropped, so its local port is
 * set. No TCP state is 0. */
#define PACKET_SEEN 0

/* Resolves a parked attempt of sk, if any, now that its local port is set
 * (newstate PACKET_SEEN), (with --outcome) it has left SYN_SENT for
 * newstate, or its socket is being destroyed or connects again
 * (OUTCOME_END_UNSEEN). */
static __always_inline void resolve_pending(const struct sock *sk, bool typed, bool slots,
					    int newstate)
{
	const struct tcp_sock *tp;
	struct event e;

	if (!unpark(sk, typed, slots, &e))
		return;
	__sync_fetch_and_add(&pending_count, -1);
	if (!want_outcome) {
		e.lport = local_port(sk);
	} else {
		if (failed_only && newstate == TCP_ESTABLISHED)
			return;
		/* PACKET_SEEN comes with a socket found through a packet. */
		tp = typed_tcp_sock(sk, typed && newstate != PACKET_SEEN);
		e.lport = tp ? bpf_ntohs(tp->inet_conn.icsk_inet.inet_sport) : local_port(sk);
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
			take_answer(&e, TCP_FIELD(tp, sk, snd_una), TCP_FIELD(tp, sk, snd_nxt));
		e.syn_retries = TCP_FIELD(tp, sk, total_retrans);
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
static __always_inline void resolve_packet_owner(const struct sk_buff *skb, bool typed,
						 bool slots)
{
	const struct sock *sk;

	if (!pending_count)
		return;
	sk = READ_FIELD(typed, skb, sk);
	if (sk)
		resolve_pending(sk, typed, slots, PACKET_SEEN);
}

/* With --outcome: a packet of a parked attempt (its SYN) dropped on this
 * host is noted on the attempt, with the kernel's reason where it gives one
 * (the tracepoint's third argument, from Linux 5.17). */
static __always_inline void note_drop(const struct sk_buff *skb, bool typed, bool slots,
				      __u32 reason)
{
	const struct sock *sk;
	struct attempt *parked;

	if (!pending_count)
		return;
	sk = READ_FIELD(typed, skb, sk);
	if (!sk)
		return;
	parked = parked_attempt(sk, typed, slots);
	if (parked) {
		parked->report.drops++;
		parked->report.drop_reason = reason;
	}
}

#endif
