/* SPDX-License-Identifier: GPL-2.0 */
/*
 * With --outcome: the packets that answer an attempt with an error, an ICMP
 * (ICMPv6) error quoting its SYN or a TCP RST, seen as this host receives
 * them (netif_receive_skb, before netfilter and TCP) and kept in `answers`
 * until the attempt ends (take_answer, from resolve_pending).
 *
 * They are keyed by the attempt's local address and port only. On its way
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
/* The quoted header's first four bytes: the TCP ports. */
#define ICMP_HEADER_LEN 8

struct answer_key {
	__u8 local[16];
	__u16 lport;
	__u16 family;
};

struct answer {
	__u64 ts_ns;
	__u8 from[16];
	__u8 kind;
	__u8 type;
	__u8 code;
	__u8 ttl;
};

/* Every RST the host receives while an attempt is parked lands here, not
 * only those of attempts: an LRU table, so the others age out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct answer_key);
	__type(value, struct answer);
} answers SEC(".maps");

/* An IPv4 packet that answers an attempt: a RST to it, or an ICMP error
 * quoting a TCP segment it sent. */
static __always_inline bool v4_answer(const struct sk_buff *skb, bool typed,
				      struct answer_key *key, struct answer *a)
{
	struct iphdr ip, quoted;
	struct tcphdr tcp;
	struct icmphdr icmp;
	__u32 offset;
	__u16 lport;

	if (read_packet(skb, typed, NULL, 0, &ip, sizeof(ip)) || ip.ihl < 5 ||
	    (bpf_ntohs(ip.frag_off) & 0x1fff))
		return false;
	offset = ip.ihl * 4;
	if (ip.protocol == IPPROTO_TCP) {
		if (read_packet(skb, typed, NULL, offset, &tcp, sizeof(tcp)) || !tcp.rst)
			return false;
		__builtin_memcpy(key->local, &ip.daddr, 4);
		key->lport = bpf_ntohs(tcp.dest);
		a->kind = ANSWER_RST;
	} else if (ip.protocol == IPPROTO_ICMP) {
		if (read_packet(skb, typed, NULL, offset, &icmp, sizeof(icmp)) ||
		    (icmp.type != ICMP_DEST_UNREACH && icmp.type != ICMP_TIME_EXCEEDED &&
		     icmp.type != ICMP_PARAMETERPROB))
			return false;
		offset += ICMP_HEADER_LEN;
		if (read_packet(skb, typed, NULL, offset, &quoted, sizeof(quoted)) ||
		    quoted.protocol != IPPROTO_TCP || quoted.ihl < 5 ||
		    read_packet(skb, typed, NULL, offset + quoted.ihl * 4, &lport, sizeof(lport)))
			return false;
		__builtin_memcpy(key->local, &quoted.saddr, 4);
		key->lport = bpf_ntohs(lport);
		a->kind = ANSWER_ICMP;
		a->type = icmp.type;
		a->code = icmp.code;
	} else {
		return false;
	}
	__builtin_memcpy(a->from, &ip.saddr, 4);
	a->ttl = ip.ttl;
	key->family = 4;
	return true;
}

/* The same for IPv6. A RST or a quoted segment behind extension headers is
 * not looked for: TCP over IPv6 rarely carries any. */
static __always_inline bool v6_answer(const struct sk_buff *skb, bool typed,
				      struct answer_key *key, struct answer *a)
{
	struct ipv6hdr ip, quoted;
	struct tcphdr tcp;
	struct icmp6hdr icmp;
	__u32 offset = sizeof(ip);
	__u16 lport;

	if (read_packet(skb, typed, NULL, 0, &ip, sizeof(ip)))
		return false;
	if (ip.nexthdr == IPPROTO_TCP) {
		if (read_packet(skb, typed, NULL, offset, &tcp, sizeof(tcp)) || !tcp.rst)
			return false;
		__builtin_memcpy(key->local, &ip.daddr, sizeof(key->local));
		key->lport = bpf_ntohs(tcp.dest);
		a->kind = ANSWER_RST;
	} else if (ip.nexthdr == IPPROTO_ICMPV6) {
		if (read_packet(skb, typed, NULL, offset, &icmp, sizeof(icmp)) ||
		    (icmp.icmp6_type != ICMPV6_DEST_UNREACH && icmp.icmp6_type != ICMPV6_TIME_EXCEED &&
		     icmp.icmp6_type != ICMPV6_PARAMPROB))
			return false;
		offset += ICMP_HEADER_LEN;
		if (read_packet(skb, typed, NULL, offset, &quoted, sizeof(quoted)) ||
		    quoted.nexthdr != IPPROTO_TCP ||
		    read_packet(skb, typed, NULL, offset + sizeof(quoted), &lport, sizeof(lport)))
			return false;
		__builtin_memcpy(key->local, &quoted.saddr, sizeof(key->local));
		key->lport = bpf_ntohs(lport);
		a->kind = ANSWER_ICMP;
		a->type = icmp.icmp6_type;
		a->code = icmp.icmp6_code;
	} else {
		return false;
	}
	__builtin_memcpy(a->from, &ip.saddr, sizeof(a->from));
	a->ttl = ip.hop_limit;
	key->family = 6;
	return true;
}

static __always_inline void note_answer(const struct sk_buff *skb, bool typed)
{
	struct answer_key key = {};
	struct answer a = {};
	__u16 proto;

	proto = bpf_ntohs(READ_FIELD(typed, skb, protocol));
	if (proto == ETH_P_IP) {
		if (!v4_answer(skb, typed, &key, &a))
			return;
	} else if (proto == ETH_P_IPV6) {
		if (!v6_answer(skb, typed, &key, &a))
			return;
	} else {
		return;
	}
	a.ts_ns = bpf_ktime_get_ns();
	bpf_map_update_elem(&answers, &key, &a, BPF_ANY);
}

/* Fills e's answer fields from the answer kept for its local address and
 * port, if one arrived after the attempt began (an older one answered an
 * earlier user of the port). */
static __always_inline void take_answer(struct event *e)
{
	struct answer_key key = {};
	struct answer *a;

	__builtin_memcpy(key.local, e->saddr, sizeof(key.local));
	key.lport = e->lport;
	key.family = e->family;
	a = bpf_map_lookup_elem(&answers, &key);
	if (!a)
		return;
	if (a->ts_ns >= e->ts_ns) {
		__builtin_memcpy(e->answer_from, a->from, sizeof(e->answer_from));
		e->answer_kind = a->kind;
		e->answer_type = a->type;
		e->answer_code = a->code;
		e->answer_ttl = a->ttl;
	}
	bpf_map_delete_elem(&answers, &key);
}

#endif
