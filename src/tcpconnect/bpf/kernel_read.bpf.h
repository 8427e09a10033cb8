/* SPDX-License-Identifier: GPL-2.0 */
/*
 * One source for both ways a program may read kernel memory, so each hook is
 * written once and compiled into two programs:
 *
 * - tp_btf programs get BTF-typed arguments and read them with plain loads,
 *   which the verifier checks against the kernel's BTF. This is the fast path:
 *   a bpf_probe_read_kernel call per field cost the traced connect ~30 ns.
 * - raw_tp programs are the fallback for kernels without their own BTF (run
 *   with --btf FILE): they get untyped pointers, which may only be read
 *   through bpf_probe_read_kernel.
 *
 * Both are CO-RE relocated, so field offsets follow the running kernel. The
 * `typed` argument is a compile-time constant in every caller and the
 * functions using it are always inlined, so each program keeps only its arm.
 */
#ifndef KERNEL_READ_BPF_H
#define KERNEL_READ_BPF_H

#include <bpf/bpf_core_read.h>

#define READ_FIELD(typed, ptr, field) ((typed) ? (ptr)->field : BPF_CORE_READ(ptr, field))

/* Both programs of a hook from one call: NAME as tp_btf, NAME_raw as raw_tp.
 * `call` reads the tracepoint's arguments from ctx[] (the verifier types a
 * tp_btf program's ctx loads by the tracepoint's prototype, whatever the
 * cast) and sees `typed`. User space autoloads one of the two. */
#define TYPED_AND_RAW(hook, name, call)                                                       \
	SEC("tp_btf/" #hook)                                                                    \
	int name(__u64 *ctx)                                                                    \
	{                                                                                       \
		const bool typed = true;                                                        \
		call;                                                                           \
		return 0;                                                                       \
	}                                                                                       \
	SEC("raw_tp/" #hook)                                                                    \
	int name##_raw(__u64 *ctx)                                                              \
	{                                                                                       \
		const bool typed = false;                                                       \
		call;                                                                           \
		return 0;                                                                       \
	}

#endif
