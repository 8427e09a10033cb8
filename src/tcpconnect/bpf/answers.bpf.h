/* SPDX-License-Identifier: GPL-2.0 */
/*
 * With --outcome: the packets that answer an attempt with an error, an ICMP
 * (ICMPv6) error quoting its SYN or a TCP RST, seen as this host receives
 * them (netif_receive_skb, before netfilter and TCP) and kept in `answers`
 * until the attempt ends (take_answer, from resolve_pending).
 *
 * An answer is the attempt's only if it carries the sequence number TCP
 * itself checks before acting on it: a RST must acknowledge the SYN
 * (tcp_rcv_synsent_state_process: snd_una < ack_seq <= snd_nxt, and a RST
 * without ACK is ignored there), an ICMP error must quote it
 * (tcp_v4_err/tcp_v6_err: snd_una <= seq <= snd_nxt). So an answer left in
 * a port's slot by an earlier attempt on the port is never taken by a later
 * one (its ISN differs), and neither is one TCP ignored.
 *
 * They are found by the attempt's local address and port only. On its way
 * in, an answer still carries the addresses of the wire: where this host
 * rewrote the destination on the way out (DNAT, e.g. a Kubernetes service
 * address), the RST comes from the real backend and the ICMP error quotes
 * it, and conntrack undoes that only later, in PREROUTING. The local side is
 * not rewritten, and the real sender is the one worth naming.
 *
 * Only the linear area is read (as -d does without a dynptr): an answer
 * whose headers lie beyond it is not kept, and its attempt shows no sender.
 */
#ifndef ANSWERS_BPF_H
#define ANSWERS_BPF_H

#include "dns_packet.bpf.h"

/* A define of the UAPI headers, so not in vmlinux.h (IPPROTO_ICMP is). */
#define IPPROTO_ICMPV6 58
/* The ICMP errors that quote the packet they are about (RFC 792, 4443). */
#define ICMP_DEST_UNREACH 3
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_TIME_EXCEED 3
#define ICMPV6_PARAMPROB 4
/* An ICMP (ICMPv6) error's own header, before the packet it quotes. */
#define ICMP_HEADER_LEN 8

/* The last answer received for one local port: `answers` has a slot per port
 * number, and the attempt's end takes the one of its own port if the local
 * address, family and sequence number are its own too. An array, not a
 * table keyed by address and port: its lookup is an address computation the
 * verifier inlines, where an LRU table's update (per received answer) and
 * lookup and delete (per failed attempt) took locks; measured in
 * docs/performance.md. Two attempts on one port number at once (different
 * local addresses or namespaces) may overwrite each other's answer: the one
 * that lost it shows no sender. */
struct answer {
	/* The RST's ack_seq, or the sequence number of the segment an ICMP
	 * error quotes. */
	__u32 seq;
	__u8 local[16];
	__u8 from[16];
	__u16 family;
	__u8 kind;
	__u8 type;
	__u8 code;
	__u8 ttl;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct answer);
} answers SEC(".maps");

/* The first bytes of a TCP header, all an ICMP error must quote (RFC 792). */
struct quoted_tcp {
	__be16 source;
	__be16 dest;
	__be32 seq;
};

/* A packet's network header and the transport header after it, read with
 * one helper call: the program reads every packet received while an attempt
 * waits, and most are no answer. Any answer is at least this long (a RST
 * without options; an ICMP error quotes an IP header and 8 bytes more). */
struct v4_headers {
	struct iphdr ip;
	union {
		struct tcphdr tcp;
		struct icmphdr icmp;
	};
};

struct v6_headers {
	struct ipv6hdr ip;
	union {
		struct tcphdr tcp;
		struct icmp6hdr icmp;
	};
};

/* An IPv4 packet that answers an attempt: a RST to it, or an ICMP error
 * quoting a TCP segment it sent. */
static __always_inline bool v4_answer(const struct sk_buff *skb, bool typed, __u16 *port,
				      struct answer *a)
{
	struct v4_headers h;
	struct iphdr quoted;
	struct quoted_tcp segment;
	__u32 offset;

	if (read_packet(skb, typed, NULL, 0, &h, sizeof(h)) || h.ip.ihl < 5 ||
	    (bpf_ntohs(h.ip.frag_off) & 0x1fff))
		return false;
	offset = h.ip.ihl * 4;
	/* IP options put the transport header further on. */
	if (offset != sizeof(h.ip) && read_packet(skb, typed, NULL, offset, &h.tcp, sizeof(h.tcp)))
		return false;
	if (h.ip.protocol == IPPROTO_TCP) {
		if (!h.tcp.rst || !h.tcp.ack)
			return false;
		__builtin_memcpy(a->local, &h.ip.daddr, 4);
		*port = bpf_ntohs(h.tcp.dest);
		a->seq = bpf_ntohl(h.tcp.ack_seq);
		a->kind = ANSWER_RST;
	} else if (h.ip.protocol == IPPROTO_ICMP) {
		if (h.icmp.type != ICMP_DEST_UNREACH && h.icmp.type != ICMP_TIME_EXCEEDED &&
		    h.icmp.type != ICMP_PARAMETERPROB)
			return false;
		offset += ICMP_HEADER_LEN;
		if (read_packet(skb, typed, NULL, offset, &quoted, sizeof(quoted)) ||
		    quoted.protocol != IPPROTO_TCP || quoted.ihl < 5 ||
		    read_packet(skb, typed, NULL, offset + quoted.ihl * 4, &segment,
				sizeof(segment)))
			return false;
		__builtin_memcpy(a->local, &quoted.saddr, 4);
		*port = bpf_ntohs(segment.source);
		a->seq = bpf_ntohl(segment.seq);
		a->kind = ANSWER_ICMP;
		a->type = h.icmp.type;
		a->code = h.icmp.code;
	} else {
		return false;
	}
	__builtin_memcpy(a->from, &h.ip.saddr, 4);
	a->ttl = h.ip.ttl;
	a->family = 4;
	return true;
}

/* The same for IPv6. A RST or a quoted segment behind extension headers is
 * not looked for: TCP over IPv6 rarely carries any. */
static __always_inline bool v6_answer(const struct sk_buff *skb, bool typed, __u16 *port,
				      struct answer *a)
{
	struct v6_headers h;
	struct ipv6hdr quoted;
	struct quoted_tcp segment;
	__u32 offset = sizeof(h.ip);

	if (read_packet(skb, typed, NULL, 0, &h, sizeof(h)))
		return false;
	if (h.ip.nexthdr == IPPROTO_TCP) {
		if (!h.tcp.rst || !h.tcp.ack)
			return false;
		__builtin_memcpy(a->local, &h.ip.daddr, sizeof(a->local));
		*port = bpf_ntohs(h.tcp.dest);
		a->seq = bpf_ntohl(h.tcp.ack_seq);
		a->kind = ANSWER_RST;
	} else if (h.ip.nexthdr == IPPROTO_ICMPV6) {
		if (h.icmp.icmp6_type != ICMPV6_DEST_UNREACH &&
		    h.icmp.icmp6_type != ICMPV6_TIME_EXCEED && h.icmp.icmp6_type != ICMPV6_PARAMPROB)
			return false;
		offset += ICMP_HEADER_LEN;
		if (read_packet(skb, typed, NULL, offset, &quoted, sizeof(quoted)) ||
		    quoted.nexthdr != IPPROTO_TCP ||
		    read_packet(skb, typed, NULL, offset + sizeof(quoted), &segment,
				sizeof(segment)))
			return false;
		__builtin_memcpy(a->local, &quoted.saddr, sizeof(a->local));
		*port = bpf_ntohs(segment.source);
		a->seq = bpf_ntohl(segment.seq);
		a->kind = ANSWER_ICMP;
		a->type = h.icmp.icmp6_type;
		a->code = h.icmp.icmp6_code;
	} else {
		return false;
	}
	__builtin_memcpy(a->from, &h.ip.saddr, sizeof(a->from));
	a->ttl = h.ip.hop_limit;
	a->family = 6;
	return true;
}

static __always_inline void note_answer(const struct sk_buff *skb, bool typed)
{
	struct answer a = {};
	struct answer *slot;
	__u16 proto;
	__u32 port;
	__u16 lport;

	proto = bpf_ntohs(READ_FIELD(typed, skb, protocol));
	if (proto == ETH_P_IP) {
		if (!v4_answer(skb, typed, &lport, &a))
			return;
	} else if (proto == ETH_P_IPV6) {
		if (!v6_answer(skb, typed, &lport, &a))
			return;
	} else {
		return;
	}
	port = lport;
	slot = bpf_map_lookup_elem(&answers, &port);
	if (slot)
		__builtin_memcpy(slot, &a, sizeof(a));
}

/* Whether TCP acts on an answer with this sequence number for an attempt
 * whose SYN is snd_una and which sent up to snd_nxt: the kernel's after()
 * and between() of tcp.h, in the same wrapping arithmetic. */
static __always_inline bool answers_syn(const struct answer *a, __u32 snd_una, __u32 snd_nxt)
{
	if (a->kind == ANSWER_RST)
		return (__s32)(a->seq - snd_una) > 0 && (__s32)(a->seq - snd_nxt) <= 0;
	return snd_nxt - snd_una >= a->seq - snd_una;
}

/* Fills e's answer fields from the answer kept for its local port, if it was
 * to e's local address and TCP would act on it for this attempt (see the
 * top of this file). */
static __always_inline void take_answer(struct event *e, __u32 snd_una, __u32 snd_nxt)
{
	__u32 port = e->lport;
	struct answer *a = bpf_map_lookup_elem(&answers, &port);
	__u64 mine[2], theirs[2];

	if (!a || a->family != e->family || !answers_syn(a, snd_una, snd_nxt))
		return;
	__builtin_memcpy(mine, e->saddr, sizeof(mine));
	__builtin_memcpy(theirs, a->local, sizeof(theirs));
	if (mine[0] != theirs[0] || mine[1] != theirs[1])
		return;
	__builtin_memcpy(e->answer_from, a->from, sizeof(e->answer_from));
	e->answer_kind = a->kind;
	e->answer_type = a->type;
	e->answer_code = a->code;
	e->answer_ttl = a->ttl;
}

#endif
