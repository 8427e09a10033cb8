// SPDX-License-Identifier: GPL-2.0
/* Holds every connect() of the cgroup it is attached to for HOLD_NS, then
 * lets it through, as a slow policy agent's cgroup program would: the time
 * passes after the connect() call's entry and before its socket reaches
 * SYN_SENT. A cgroup program cannot sleep, so it spins with bpf_loop (Linux
 * 5.17) until the clock says the time is up; a count of turns alone would
 * hold for as long as the machine takes to make them. For
 * tests/test_outcome.py (HOLD_MS there). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#define HOLD_NS (20 * 1000 * 1000ULL)
/* bpf_loop's most turns (BPF_MAX_LOOPS): a bound, not the hold. */
#define MAX_TURNS (1 << 23)

static long wait_until(__u32 turn, void *until)
{
	return bpf_ktime_get_ns() >= *(__u64 *)until;
}

static __always_inline int hold(void)
{
	__u64 until = bpf_ktime_get_ns() + HOLD_NS;

	bpf_loop(MAX_TURNS, wait_until, &until, 0);
	return 1;
}

SEC("cgroup/connect4")
int slow_connect4(struct bpf_sock_addr *ctx)
{
	return hold();
}

SEC("cgroup/connect6")
int slow_connect6(struct bpf_sock_addr *ctx)
{
	return hold();
}

char LICENSE[] SEC("license") = "GPL";
