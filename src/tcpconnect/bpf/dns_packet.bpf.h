/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Finding a DNS answer in a received packet, shared by the two objects that
 * capture answers for -d: tcpconnect.bpf.c, which reads the packet's linear
 * area on any kernel, and dns_dynptr.bpf.c, which reads all of it through an
 * skb dynptr where the kernel allows that. At the netif_receive_skb
 * tracepoint skb->data is at the network header.
 */
#ifndef DNS_PACKET_BPF_H
#define DNS_PACKET_BPF_H

#include "kernel_read.bpf.h"
#include "ring.bpf.h"

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_UDP 17
#define DNS_PORT 53

#define NOT_DNS (-1)
#define HEADERS_PAGED (-2)

static __always_inline __u32 linear_length(const struct sk_buff *skb, bool typed)
{
	return READ_FIELD(typed, skb, len) - READ_FIELD(typed, skb, data_len);
}

/* Reads size bytes at offset of the packet: through the dynptr when there is
 * one, else from the linear area only. */
static __always_inline int read_packet(const struct sk_buff *skb, bool typed,
				       const struct bpf_dynptr *packet, __u32 offset, void *dst,
				       __u32 size)
{
	if (packet)
		return bpf_dynptr_read(dst, size, packet, offset, 0);
	if (offset + size > linear_length(skb, typed))
		return -1;
	return bpf_probe_read_kernel(dst, size, READ_FIELD(typed, skb, data) + offset);
}

/* Returns the offset of the UDP payload of a datagram from port 53, or
 * NOT_DNS; without a dynptr, HEADERS_PAGED when the headers needed to tell
 * lie beyond the linear area. */
static __always_inline int dns_payload_offset(const struct sk_buff *skb, bool typed, __u16 proto,
					      const struct bpf_dynptr *packet, __u16 *payload_len)
{
	int unreadable = packet ? NOT_DNS : HEADERS_PAGED;
	struct udphdr udp;
	int offset;

	if (proto == ETH_P_IP) {
		struct iphdr ip;

		if (read_packet(skb, typed, packet, 0, &ip, sizeof(ip)))
			return unreadable;
		/* Later fragments carry no UDP header. */
		if (ip.protocol != IPPROTO_UDP || (bpf_ntohs(ip.frag_off) & 0x1fff) || ip.ihl < 5)
			return NOT_DNS;
		offset = ip.ihl * 4;
	} else {
		struct ipv6hdr ip6;

		if (read_packet(skb, typed, packet, 0, &ip6, sizeof(ip6)))
			return unreadable;
		if (ip6.nexthdr != IPPROTO_UDP)
			return NOT_DNS;
		offset = sizeof(ip6);
	}
	if (read_packet(skb, typed, packet, offset, &udp, sizeof(udp)))
		return unreadable;
	if (udp.source != bpf_htons(DNS_PORT) || bpf_ntohs(udp.len) < sizeof(udp))
		return NOT_DNS;
	*payload_len = bpf_ntohs(udp.len) - sizeof(udp);
	return offset + sizeof(udp);
}

/* Clamped in asm: written in C, clang bounds a copy of len and hands the
 * helper the unbounded original, which the verifier rejects. */
static __always_inline __u32 capture_length(__u32 len)
{
	asm volatile("if %[len] <= %[max] goto +1; %[len] = %[max]"
		     : [len] "+r"(len)
		     : [max] "i"(DNS_PAYLOAD_MAX));
	return len;
}

/* An answer's record, reserved in `ring` and filled but for its payload,
 * which the caller copies (len bytes, from capture_length()) and submits;
 * NULL when the ring is full, counted in *lost. */
static __always_inline struct dns_event *reserve_answer(void *ring, __u64 *lost,
							 __u16 payload_len, __u32 len)
{
	struct dns_event *e = bpf_ringbuf_reserve(ring, sizeof(*e), 0);

	if (!e) {
		__sync_fetch_and_add(lost, 1);
		return NULL;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->orig_len = payload_len;
	e->len = len;
	return e;
}

#endif
