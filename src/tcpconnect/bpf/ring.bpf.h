/* SPDX-License-Identifier: GPL-2.0 */
#ifndef RING_BPF_H
#define RING_BPF_H

/* Wake the reader only once this much is queued; it polls with a timeout
 * for the rest, which keeps the traced workload from paying for a wakeup
 * on every connect. Set by user space before load. */
const volatile __u64 wakeup_bytes = 1;

static __always_inline __u64 ringbuf_flags(void *ring)
{
	return bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA) >= wakeup_bytes ?
		       BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

#endif
