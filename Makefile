# Set-up, build and test on Debian 12. Every target installs what it needs.
# The venv is made by Debian's Python (RUN_PACKAGES' python3), the interpreter the
# package runs with, never by another python3 found first on PATH: Debian's build
# also starts in about half the time of a plain source build (0.9 against 0.5 s in
# the kernel matrix's TCG guests, where every test starts the tool).
PYTHON ?= /usr/bin/python3
VENV := .venv
BUILD := build
# Two objects: dns_dynptr.bpf.o holds the one program that needs a kfunc, so
# tcpconnect.bpf.o loads without the kernel's own BTF (see dns_dynptr.bpf.c).
BPF_OBJS := src/tcpconnect/tcpconnect.bpf.o src/tcpconnect/dns_dynptr.bpf.o
BPF_HEADERS := $(wildcard src/tcpconnect/bpf/*.h)
# Running from the checkout needs only libbpf1, libatomic1 (the ring reader's memory
# ordering) and Python (man-db for `man tcpconnect`); building the objects adds clang,
# libbpf's headers and bpftool. The tests' own needs are separate, so `make run` leaves
# them out.
RUN_PACKAGES := libbpf1 libatomic1 python3 python3-venv man-db
BUILD_PACKAGES := clang libbpf-dev bpftool make
# The Debian package's build: debian/control's Build-Depends, build-essential
# (which dpkg-buildpackage requires of every build) and lintian, which checks it.
DEB_PACKAGES := $(BUILD_PACKAGES) build-essential debhelper dh-python python3 lintian
TEST_PACKAGES := gcc liburing-dev iproute2 dnsmasq-base procps util-linux nftables prometheus \
	podman runc catatonit mmdebstrap openssl docker.io containerd
APT_PACKAGES ?= $(RUN_PACKAGES) $(BUILD_PACKAGES)
HELPERS := $(BUILD)/uring_connect $(BUILD)/connect_loop $(BUILD)/deny_connect.bpf.o \
	$(BUILD)/slow_connect.bpf.o \
	$(BUILD)/missing_tracepoint.bpf.o
# The architecture whose kernels `make test-kernels` boots: this machine's unless given.
ARCH := $(shell uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')
ARGS ?=
PIP := $(VENV)/bin/pip

.PHONY: setup install uninstall deb apt-deb bpf run wheel test test-kernels bench bench-peers bench-reader bench-syscalls bench-ring bench-paths bench-ratios clean apt apt-test

# The tool at .venv/bin/tcpconnect, nothing outside the checkout but apt packages.
setup: apt $(VENV)/.installed $(VENV)/.bytecode $(BPF_OBJS)

# The Debian package (debian/), installed with apt like any system tool:
# /usr/sbin/tcpconnect, its man page, Python modules and BPF objects under
# /usr, nothing pointing into the checkout. apt also installs the Debian
# packages of -d and --metrics (the package recommends them).
install: deb
	apt-get install -y -q $(CURDIR)/$(DEB)

uninstall:
	apt-get purge -y -q tcpconnect

# The package's version and architecture, as dpkg-buildpackage names its file.
DEB := $(BUILD)/tcpconnect_$(shell sed -n '1s/.*(\(.*\)).*/\1/p' debian/changelog)_$(shell dpkg --print-architecture).deb
DEB_INPUTS := $(wildcard Makefile LICENSE README.md docs/* debian/* debian/*/* src/tcpconnect/*.py \
	src/tcpconnect/ringbuf/*.py src/tcpconnect/bpf/*)

deb: apt-deb $(DEB)

apt-deb:
	@$(MAKE) --no-print-directory apt APT_PACKAGES="$(DEB_PACKAGES)"

# Built in a copy under build/deb: dpkg-buildpackage writes its files next to
# the tree it builds, and debian/rules clean starts from sources only (the
# objects are compiled in the package build).
$(DEB): $(DEB_INPUTS)
	rm -rf $(BUILD)/deb
	mkdir -p $(BUILD)/deb/tcpconnect
	tar -c --exclude=./.git --exclude=./$(BUILD) --exclude=./$(VENV) --exclude=./dist \
	  --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache \
	  --exclude=.hypothesis --exclude='*.bpf.o' . | tar -x -C $(BUILD)/deb/tcpconnect
	cd $(BUILD)/deb/tcpconnect && dpkg-buildpackage -us -uc -b
	lintian --fail-on error $(BUILD)/deb/tcpconnect_*.changes
	mv $(BUILD)/deb/$(notdir $(DEB)) $(DEB)

# Installs only what is missing, so repeated runs need no network; apt's own
# lines name every package it fetches, dependencies included.
apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing$$missing (and what they depend on)"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

apt-test:
	@$(MAKE) --no-print-directory apt APT_PACKAGES="$(TEST_PACKAGES)"

# The venv's own setuptools builds the package (pyproject's build-system asks for
# 77+): no throwaway build environment is downloaded for each install.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install 'setuptools>=77'
	$(PIP) install --no-build-isolation -e '.[dns,metrics]'
	touch $@

# The editable install runs the sources in place. Compiled here, as pip compiles an
# installed wheel, they are not compiled again at each start wherever Python may not
# write bytecode (PYTHONDONTWRITEBYTECODE, a read-only checkout): ~20 ms of start-up.
$(VENV)/.bytecode: $(VENV)/.installed $(wildcard src/tcpconnect/*.py)
	$(VENV)/bin/python -m compileall -q src/tcpconnect
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install --no-build-isolation -e '.[dns,metrics,test]'
	touch $@

# vmlinux.h comes from the build machine's BTF; CO-RE relocates the object
# to whatever kernel it later runs on, of either architecture: the programs
# read tracepoint arguments and CO-RE-relocated kernel fields, never saved
# registers, so no __TARGET_ARCH_* is given, and bpf_tracing.h's per-arch
# register macros (PT_REGS_*, BPF_KPROBE) fail to build should one creep in.
# The x86-built objects pass the suite on Debian's arm64 kernels (docs/kernels.md).
$(BUILD)/vmlinux.h:
	mkdir -p $(BUILD)
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp
	mv $@.tmp $@

bpf: $(BPF_OBJS)

src/tcpconnect/%.bpf.o: src/tcpconnect/bpf/%.bpf.c $(BPF_HEADERS) $(BUILD)/vmlinux.h
	clang -g -O2 -Wall -Werror -target bpf -I$(BUILD) -c $< -o $@

# The kernel matrix's arm64 guests (kernels/boot) run this checkout with a root of their own
# (kernels/root) and these: the venv is made by this machine's Debian Python, the same 3.11 as
# the root's (both Debian 12), so its bin/python, /usr/bin/python3, is the root's own in a guest;
# pip fills it with arm64 wheels (glibc 2.17 on, which Debian 12's 2.36 runs). The helpers are
# cross-compiled with the root as sysroot, which then carries no compiler (its packages'
# scripts run under qemu-user, the slow part of making it).
ARM64 := $(BUILD)/arm64
ARM64_USERLAND := $(ARM64)/venv/.installed $(ARM64)/uring_connect $(ARM64)/connect_loop
ARM64_PYTHON := /usr/bin/python3
PYVER = $(shell $(ARM64_PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
$(ARM64)/%: CC = aarch64-linux-gnu-gcc --sysroot="$$(kernels/root arm64)"

$(ARM64)/venv/.installed: pyproject.toml
	@root=$$(kernels/root arm64) && test -d "$$root/usr/lib/python$(PYVER)" || \
	  { echo "the arm64 root has no Python $(PYVER), this machine's, for which the venv is made" >&2; exit 1; }
	rm -rf $(ARM64)/venv
	$(ARM64_PYTHON) -m venv --without-pip $(ARM64)/venv
	$(PIP) install -q --target $(ARM64)/venv/lib/python$(PYVER)/site-packages \
	  --platform manylinux2014_aarch64 --implementation cp --python-version $(PYVER) \
	  --only-binary=:all: -e '.[dns,metrics,test]'
	touch $@

$(BUILD)/uring_connect $(ARM64)/uring_connect: tests/helpers/uring_connect.c
	mkdir -p $(@D)
	$(CC) -O2 -Wall -Wextra -o $@ $< -luring

$(BUILD)/%.bpf.o: tests/helpers/%.bpf.c $(BUILD)/vmlinux.h
	clang -g -O2 -Wall -Werror -target bpf -I$(BUILD) -c $< -o $@

$(BUILD)/syscall_loop: bench/syscall_loop.c
	mkdir -p $(BUILD)
	cc -O2 -Wall -Wextra -o $@ $<

$(BUILD)/connect_loop $(ARM64)/connect_loop: bench/connect_loop.c
	mkdir -p $(@D)
	$(CC) -O2 -Wall -Wextra -o $@ $< -lpthread

run: setup
	$(VENV)/bin/tcpconnect $(ARGS)

# dist/tcpconnect-*.whl holds the CO-RE objects built here: installing it needs
# no compiler, and the same objects serve every kernel.
wheel: setup
	$(PIP) wheel --no-deps --no-build-isolation --wheel-dir dist .

# The second pass hides the kernel's BTF from the tool and hands it over with
# --btf: the raw_tp programs of kernels without BTF, against the same rows.
# One file per kernel-side path: attribution's netns read is in test_trace's
# JSON rows, the metrics' count key in test_count's tables, the executable's
# path program and key in test_metrics_exe's series.
RAW_TP_TESTS := tests/test_trace.py tests/test_count.py tests/test_containers.py \
	tests/test_dns_trace.py tests/test_outcome.py tests/test_answers.py tests/test_failures.py \
	tests/test_metrics_exe.py

test: setup apt-test $(VENV)/.installed-test $(HELPERS)
	$(VENV)/bin/pytest -q
	TEST_WITHOUT_KERNEL_BTF=1 $(VENV)/bin/pytest -q $(RAW_TP_TESTS)

# The suite less its host_only tests on Debian's own kernels, each booted in qemu under TCG
# (kernels/versions pins the packages; kernels/matrix says how): 5.10, 6.1 and 6.12 for x86 with
# this machine's root, then ARM64_SUBSET on arm64 6.12 with a root of its own. ARCH=arm64 runs
# the whole suite on arm64 6.1 and 6.12 instead, and the raw_tp pass on 6.1. RAW_TP_KERNELS="5.10"
# adds the raw_tp pass in that guest. Narrow it with KERNELS="6.1" and/or PYTEST_ARGS="-k dns".
#
# ARM64_SUBSET: CI's hour holds one arm64 guest of a few minutes (the whole suite takes 18 min
# there). What can break on arm64 alone is the kernel side on arm64's BTF, verifier and
# JIT (the x86-built objects, CO-RE-relocated there) and the user side's ABI: ctypes calls into
# libbpf and libc, the ring reader's acquire/release through libatomic, the seccomp filter's
# syscall numbers, the cross-built helpers. So, one test each: a connect's exact row (IPv4;
# IPv6 through io_uring), -c, --outcome's drop reason, -d's whole-packet program (a kfunc), the
# raw_tp programs (--btf), -L both ways (arm64 has BPF trampolines from 6.0), the selftest (every result, the connect() syscall tracepoints'
# among them, in namespaces), the loader's libbpf message (the print callback's va_list), the
# real ring wrapping and its accounting, and the fake ring (host_only elsewhere: on x86 the
# host run has it). 28 tests, 65 s wall in the guest here (2026-12-06). On 6.12, the kernel with the most
# programs (the whole-packet one); ARCH=arm64 covers 6.1.
ARM64_SUBSET := -q tests/test_ringbuf.py \
	'tests/test_kernel.py::test_a_seccomp_filter_refusing_bpf_is_named_not_the_kernel[EPERM]' \
	tests/test_loader.py::test_missing_tracepoint_is_named \
	tests/test_loader.py::test_records_that_wrap_around_the_ring_are_read_whole \
	tests/test_loader.py::test_accounting_is_exact_while_reading \
	tests/test_port_hook.py::test_the_probe_agrees_with_tracefs \
	tests/test_port_hook.py::test_every_family_gets_its_exact_port \
	'tests/test_trace.py::test_refused_loopback_connect_is_one_exact_row[4-127.0.0.1]' \
	'tests/test_trace.py::test_io_uring_connect[6-::1-plain]' \
	'tests/test_count.py::test_known_connects_give_exact_table[2]' \
	'tests/test_outcome.py::test_syn_dropped_on_this_host_names_the_reason[4]' \
	'tests/test_dns_trace.py::test_answer_in_page_fragments[payload-paged]' \
	tests/test_kernel.py::test_hidden_kernel_btf_with_btf_file_traces \
	tests/test_selftest.py::test_selftest_passes_on_this_kernel
KERNELS ?=
KERNELS_ARCH := $(if $(filter arm64,$(ARCH)),arm64,amd64)
# Whether an arm64 guest runs: by default always (the subset, or ARCH=arm64's leg), else when
# KERNELS names one; only then is the arm64 root made (kernels/root), ~100 s the first time.
ARM64_GUESTS := $(if $(KERNELS),$(filter %-arm64,$(KERNELS)),yes)
test-kernels: setup apt-test $(VENV)/.installed-test $(HELPERS)
	@$(MAKE) --no-print-directory apt APT_PACKAGES="qemu-system-x86 busybox-static kmod xz-utils zstd"
ifneq ($(ARM64_GUESTS),)
	@$(MAKE) --no-print-directory apt APT_PACKAGES="qemu-system-arm qemu-user-static binfmt-support \
	  arch-test gcc-aarch64-linux-gnu"
	@$(MAKE) --no-print-directory $(ARM64_USERLAND)
endif
ifeq ($(KERNELS_ARCH),arm64)
	RAW_TP_TESTS="$(RAW_TP_TESTS)" RAW_TP_KERNELS="$${RAW_TP_KERNELS-6.1-arm64}" KERNELS_ARCH=arm64 \
	  kernels/matrix $(KERNELS)
else
	RAW_TP_TESTS="$(RAW_TP_TESTS)" SUBSET_KERNELS=6.12-arm64 SUBSET_ARGS="$(ARM64_SUBSET)" \
	  kernels/matrix $(KERNELS)
endif

# The benchmark's peers: libbpf-tools tcpstates is measured; bcc and bpftrace
# only show how they fail here, so not getting them does not stop it.
bench: setup apt-test $(BUILD)/connect_loop
	@$(MAKE) --no-print-directory apt APT_PACKAGES=libbpf-tools
	-@$(MAKE) --no-print-directory apt APT_PACKAGES="bpfcc-tools bpftrace"
	$(VENV)/bin/python bench/run.py $(ARGS)

# The real peers (bcc, libbpf-tools and bpftrace tcpconnect need kprobes) against this tool's
# default, -L and -c modes, in guests of Debian's 6.1 and 6.12 kernels (kernels/bench-peers says
# how; PEER_KERNELS, BENCH_ARGS narrow it). The guests see this machine's root, so the peers are
# installed here; bcc's kernel headers are fetched for each guest's kernel.
PEER_KERNELS ?= 6.1 6.12
bench-peers: setup $(BUILD)/connect_loop
	@$(MAKE) --no-print-directory apt APT_PACKAGES="bpfcc-tools libbpf-tools bpftrace \
	  qemu-system-x86 busybox-static kmod xz-utils zstd"
	kernels/bench-peers $(PEER_KERNELS)

# What the connect() syscall tracepoints cost every other syscall (bench/syscall_cost.py).
bench-syscalls: setup $(BUILD)/syscall_loop
	$(VENV)/bin/python bench/syscall_cost.py $(ARGS)

# The ring reader's CPU per record, with and without its memory ordering (bench/ring_reader.py).
bench-ring: setup
	$(VENV)/bin/python bench/ring_reader.py $(ARGS)

# Rows per second one reader serves in each mode, and what past it is lost (bench/reader_limit.py).
bench-reader: setup $(BUILD)/connect_loop
	$(VENV)/bin/python bench/reader_limit.py $(ARGS)

# BPF run time per program run on each kernel path (see bench/kernel_paths.py).
bench-paths: setup apt-test $(BUILD)/connect_loop
	$(VENV)/bin/python bench/kernel_paths.py $(ARGS)

# -L and --outcome against the default mode, BPF time per connect, -L with and without its port
# hook (bench/mode_ratios.py). In a guest: APPEND=tsc=reliable kernels/boot 6.1 \
#   '.venv/bin/python bench/mode_ratios.py' (why tsc=reliable: the script's docstring).
bench-ratios: setup apt-test $(BUILD)/connect_loop
	$(VENV)/bin/python bench/mode_ratios.py $(ARGS)

clean:
	rm -rf $(BUILD) $(BPF_OBJS) $(VENV) dist src/*.egg-info
