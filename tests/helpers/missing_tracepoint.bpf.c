// SPDX-License-Identifier: GPL-2.0
/* A program for a tracepoint no kernel has: loading it makes libbpf warn
 * through the tool's print callback, whose text the error must carry. For
 * tests/test_loader.py; built by make like the other helpers, so a guest
 * without clang runs that test too. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

SEC("tp_btf/no_such_tracepoint")
int BPF_PROG(handler, struct sock *sk) { return 0; }

char LICENSE[] SEC("license") = "GPL";
