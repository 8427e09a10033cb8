# Set-up, build and test on Debian 12. Every target installs what it needs.
PYTHON ?= python3
VENV := .venv
BUILD := build
# Two objects: dns_dynptr.bpf.o holds the one program that needs a kfunc, so
# tcpconnect.bpf.o loads without the kernel's own BTF (see dns_dynptr.bpf.c).
BPF_OBJS := src/tcpconnect/tcpconnect.bpf.o src/tcpconnect/dns_dynptr.bpf.o
BPF_HEADERS := $(wildcard src/tcpconnect/bpf/*.h)
APT_PACKAGES := clang libbpf-dev libbpf1 bpftool iproute2 liburing-dev dnsmasq-base gcc make \
	python3 python3-venv procps util-linux nftables
HELPERS := $(BUILD)/uring_connect $(BUILD)/connect_loop
ARCH := $(shell uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')
ARGS ?=

.PHONY: install run test test-kernels bench bench-paths clean apt

install: apt $(VENV)/.installed $(BPF_OBJS) $(HELPERS)

# Installs only what is missing, so repeated runs need no network.
apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

# vmlinux.h comes from the build machine's BTF; CO-RE relocates the object
# to whatever kernel it later runs on.
$(BUILD)/vmlinux.h:
	mkdir -p $(BUILD)
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp
	mv $@.tmp $@

src/tcpconnect/%.bpf.o: src/tcpconnect/bpf/%.bpf.c $(BPF_HEADERS) $(BUILD)/vmlinux.h
	clang -g -O2 -Wall -Werror -target bpf -D__TARGET_ARCH_$(ARCH) \
	  -I$(BUILD) -c $< -o $@

$(BUILD)/uring_connect: tests/helpers/uring_connect.c
	mkdir -p $(BUILD)
	cc -O2 -Wall -Wextra -o $@ $< -luring

$(BUILD)/connect_loop: bench/connect_loop.c
	mkdir -p $(BUILD)
	cc -O2 -Wall -Wextra -o $@ $< -lpthread

run: install
	$(VENV)/bin/tcpconnect $(ARGS)

# The second pass hides the kernel's BTF from the tool and hands it over with
# --btf: the raw_tp programs of kernels without BTF, against the same rows.
RAW_TP_TESTS := tests/test_trace.py tests/test_count.py tests/test_containers.py \
	tests/test_dns_trace.py

test: install
	$(VENV)/bin/pytest -q
	TEST_WITHOUT_KERNEL_BTF=1 $(VENV)/bin/pytest -q $(RAW_TP_TESTS)

# The same suite on Debian's own 5.10, 6.1 and 6.12 kernels, each booted in qemu with this
# machine's root (kernels/versions pins the packages; kernels/matrix says how).
# Narrow it with KERNELS="6.1" and/or PYTEST_ARGS="-k dns".
KERNELS ?=
test-kernels: install
	@$(MAKE) --no-print-directory apt APT_PACKAGES="qemu-system-x86 busybox-static kmod xz-utils zstd"
	RAW_TP_TESTS="$(RAW_TP_TESTS)" kernels/matrix $(KERNELS)

# The benchmark's peers: libbpf-tools tcpstates is measured; bcc and bpftrace
# only show how they fail here, so not getting them does not stop it.
bench: install
	@$(MAKE) --no-print-directory apt APT_PACKAGES=libbpf-tools
	-@$(MAKE) --no-print-directory apt APT_PACKAGES="bpfcc-tools bpftrace"
	$(VENV)/bin/python bench/run.py $(ARGS)

# BPF run time per program run on each kernel path (see bench/kernel_paths.py).
bench-paths: install
	$(VENV)/bin/python bench/kernel_paths.py $(ARGS)

clean:
	rm -rf $(BUILD) $(BPF_OBJS) $(VENV) src/*.egg-info
