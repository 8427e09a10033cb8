// SPDX-License-Identifier: GPL-2.0
/* Holds every connect() of the cgroup it is attached to for a few
 * milliseconds, then lets it through, as a slow policy agent's cgroup
 * program would: the time passes after the connect() call's entry and
 * before its socket reaches SYN_SENT. A cgroup program cannot sleep, so it
 * spins with bpf_loop (Linux 5.17). For tests/test_outcome.py. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

/* ~10 ms on the machine this was written on; longer under TCG. */
#define SPINS (1 << 20)

static long spin(__u32 index, void *data)
{
	return 0;
}

SEC("cgroup/connect4")
int slow_connect4(struct bpf_sock_addr *ctx)
{
	bpf_loop(SPINS, spin, NULL, 0);
	return 1;
}

SEC("cgroup/connect6")
int slow_connect6(struct bpf_sock_addr *ctx)
{
	bpf_loop(SPINS, spin, NULL, 0);
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
