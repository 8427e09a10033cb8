/* SPDX-License-Identifier: GPL-2.0 */
#ifndef RING_BPF_H
#define RING_BPF_H

/* Wake the reader only once this much is queued; it polls with a timeout
 * for the rest, which keeps the traced workload from paying for a wakeup
 * on every connect. Set by user space before load. */
const volatile __u64 wakeup_bytes = 1;

/* Set by user space while it sleeps long on an idle ring (the polls above
 * would wake it 100 times a second for nothing). Then a record asks for the
 * kernel's own rule instead: wake the reader when it has read everything
 * before this record (bpf_ringbuf_commit compares consumer_pos with the
 * record's position after its xchg), so a burst costs one wakeup. */
volatile __u32 reader_asleep;

static __always_inline __u64 ringbuf_flags(void *ring)
{
	if (bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA) >= wakeup_bytes)
		return BPF_RB_FORCE_WAKEUP;
	return reader_asleep ? 0 : BPF_RB_NO_WAKEUP;
}

#endif
