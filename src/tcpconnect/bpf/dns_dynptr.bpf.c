// SPDX-License-Identifier: GPL-2.0
/*
 * -d's capture where the kernel lets tracing programs read a whole packet
 * through an skb dynptr (kernel commit ffc83860d8c0, Linux 6.12). Unlike
 * reading skb->data it also reaches the paged fragments, where the answer is
 * when a driver splits headers from data or the sender used UDP_SEGMENT.
 *
 * A separate object because its kfunc is a typed extern, which makes libbpf
 * demand the kernel's own BTF for the whole object: tcpconnect.bpf.o must
 * still load on kernels without it. Loading this object is also the probe:
 * where the verifier refuses it, user space loads tcpconnect.bpf.o's
 * handle_receive_linear instead. It writes into tcpconnect.bpf.o's
 * dns_events ring (user space shares the map before load).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "tcpconnect.h"
#include "dns_packet.bpf.h"

extern int bpf_dynptr_from_skb(struct sk_buff *skb, __u64 flags,
			       struct bpf_dynptr *ptr__uninit) __ksym __weak;

__u64 lost_dns_events = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} dns_events SEC(".maps");

SEC("tp_btf/netif_receive_skb")
int BPF_PROG(handle_receive, struct sk_buff *skb)
{
	__u16 proto = bpf_ntohs(skb->protocol);
	struct bpf_dynptr packet;
	__u16 payload_len = 0;
	struct dns_event *e;
	__u32 len;
	int offset;

	if (proto != ETH_P_IP && proto != ETH_P_IPV6)
		return 0;
	/* The linear area first: creating the dynptr costs more than this
	 * whole test, which rejects nearly every packet. */
	offset = dns_payload_offset(skb, true, proto, NULL, &payload_len);
	if (offset == NOT_DNS)
		return 0;
	if (bpf_dynptr_from_skb(skb, 0, &packet))
		return 0;
	if (offset == HEADERS_PAGED)
		offset = dns_payload_offset(skb, true, proto, &packet, &payload_len);
	if (offset < 0 || offset >= skb->len)
		return 0;
	/* The first fragment of a larger datagram holds only part of it. */
	len = payload_len;
	if (len > skb->len - offset)
		len = skb->len - offset;

	len = capture_length(len);
	e = reserve_answer(&dns_events, &lost_dns_events, payload_len, len);
	if (!e)
		return 0;
	if (bpf_dynptr_read(e->payload, len, &packet, offset, 0))
		e->len = 0;
	bpf_ringbuf_submit(e, ringbuf_flags(&dns_events));
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
