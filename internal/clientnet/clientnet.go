// Package clientnet decides which network a client address belongs to.
//
// Every per-client decision of the plugin (failure counts, bans, CAPTCHA
// challenges, the unlock page's limits, the slow-hash queue, log
// summaries) is keyed on the client's network, not on its exact address:
// one household or one virtual machine is handed a whole IPv6 /64, and an
// attacker who may pick any of its 2^64 addresses must not get 2^64 fresh
// counters. An IPv4 address is its own network. Of is the one function
// that decides this; everything else calls it.
package clientnet

import (
	"fmt"
	"net/netip"
)

// The IPv6 prefix lengths that may be configured (lockout's ipv6_prefix).
const (
	// DefaultIPv6Prefix is what one site or one VM is usually given.
	DefaultIPv6Prefix = 64
	// MinIPv6Prefix is the shortest accepted: a /48 is a whole site's
	// allocation, and shorter prefixes would lump unrelated customers of
	// one provider together.
	MinIPv6Prefix = 48
	// MaxIPv6Prefix keys on the exact address.
	MaxIPv6Prefix = 128
)

// Of returns the network of ip that per-client decisions key on: the
// address itself (as a /32) for IPv4 and IPv4-mapped IPv6, and its
// leading ipv6Bits bits for IPv6. A zone is dropped: fe80::1%eth0 and
// fe80::1%eth1 are one client as far as a lockout is concerned. An
// ipv6Bits outside MinIPv6Prefix..MaxIPv6Prefix (such as 0, an unset
// setting) means DefaultIPv6Prefix. An invalid ip gives the invalid
// (zero) Prefix.
func Of(ip netip.Addr, ipv6Bits int) netip.Prefix {
	if !ip.IsValid() {
		return netip.Prefix{}
	}
	ip = ip.Unmap().WithZone("")
	if ip.Is4() {
		return netip.PrefixFrom(ip, 32)
	}
	if ipv6Bits < MinIPv6Prefix || ipv6Bits > MaxIPv6Prefix {
		ipv6Bits = DefaultIPv6Prefix
	}
	// Prefix cannot fail here: the bits are within 0..128 for an IPv6
	// address without a zone.
	p, _ := ip.Prefix(ipv6Bits)
	return p
}

// CheckIPv6Prefix reports whether bits may be configured as ipv6_prefix.
func CheckIPv6Prefix(bits int) error {
	if bits < MinIPv6Prefix || bits > MaxIPv6Prefix {
		return fmt.Errorf("ipv6_prefix %d: must be from %d to %d", bits, MinIPv6Prefix, MaxIPv6Prefix)
	}
	return nil
}
