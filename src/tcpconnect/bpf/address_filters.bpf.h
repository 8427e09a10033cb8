/* SPDX-License-Identifier: GPL-2.0 */
/*
 * --daddr, --exclude-daddr, --saddr and --exclude-saddr: longest-prefix-match
 * tries that user space fills after load and before attach. One address
 * space serves both families: an IPv4 address is looked up as its
 * IPv4-mapped IPv6 form (::ffff:a.b.c.d), where user space also stores IPv4
 * prefixes (::ffff:0:0/96 plus their length), so a v4-mapped IPv6
 * destination, reported as IPv4, matches IPv4 prefixes.
 */
#ifndef ADDRESS_FILTERS_BPF_H
#define ADDRESS_FILTERS_BPF_H

struct address_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/* Sized by user space to the prefixes given (an LPM trie allocates per
 * entry, as it must: BPF_F_NO_PREALLOC). */
#define ADDRESS_TRIE(name)                                                                  \
	struct {                                                                            \
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);                                        \
		__uint(max_entries, 1);                                                     \
		__uint(map_flags, BPF_F_NO_PREALLOC);                                       \
		__type(key, struct address_key);                                            \
		__type(value, __u8);                                                        \
	} name SEC(".maps")

ADDRESS_TRIE(daddr_include);
ADDRESS_TRIE(daddr_exclude);
ADDRESS_TRIE(saddr_include);
ADDRESS_TRIE(saddr_exclude);

const volatile bool filter_daddr_include = false;
const volatile bool filter_daddr_exclude = false;
const volatile bool filter_saddr_include = false;
const volatile bool filter_saddr_exclude = false;

/* Whether addr (16 bytes, IPv4 in the first four) passes an include trie
 * (when by_include) and no exclude trie entry (when by_exclude): exclusions
 * win. */
static __always_inline bool address_wanted(void *include, bool by_include, void *exclude,
					   bool by_exclude, const __u8 *addr, __u16 family)
{
	struct address_key key = { .prefixlen = 128 };

	if (!by_include && !by_exclude)
		return true;
	if (family == 4) {
		key.addr[10] = 0xff;
		key.addr[11] = 0xff;
		__builtin_memcpy(&key.addr[12], addr, 4);
	} else {
		__builtin_memcpy(key.addr, addr, sizeof(key.addr));
	}
	if (by_exclude && bpf_map_lookup_elem(exclude, &key))
		return false;
	return !by_include || bpf_map_lookup_elem(include, &key);
}

static __always_inline bool destination_wanted(const struct event *e)
{
	return address_wanted(&daddr_include, filter_daddr_include, &daddr_exclude,
			      filter_daddr_exclude, e->daddr, e->family);
}

static __always_inline bool source_wanted(const struct event *e)
{
	return address_wanted(&saddr_include, filter_saddr_include, &saddr_exclude,
			      filter_saddr_exclude, e->saddr, e->family);
}

#endif
