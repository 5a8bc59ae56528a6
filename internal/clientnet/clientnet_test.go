package clientnet

import (
	"net/netip"
	"testing"
)

func TestOf(t *testing.T) {
	tests := []struct {
		ip   string
		bits int
		want string
	}{
		{"203.0.113.7", 64, "203.0.113.7/32"},
		{"203.0.113.7", 128, "203.0.113.7/32"},
		{"::ffff:203.0.113.7", 64, "203.0.113.7/32"},
		{"2001:db8:1:2:3:4:5:6", 64, "2001:db8:1:2::/64"},
		{"2001:db8:1:2:ffff:ffff:ffff:ffff", 64, "2001:db8:1:2::/64"},
		{"2001:db8:1:2:3:4:5:6", 48, "2001:db8:1::/48"},
		{"2001:db8:1:2:3:4:5:6", 128, "2001:db8:1:2:3:4:5:6/128"},
		{"2001:db8:1:2:3:4:5:6", 0, "2001:db8:1:2::/64"},   // unset: the default
		{"2001:db8:1:2:3:4:5:6", 200, "2001:db8:1:2::/64"}, // out of range: the default
		{"fe80::1%eth0", 64, "fe80::/64"},
		{"::1", 64, "::/64"},
	}
	for _, tt := range tests {
		got := Of(netip.MustParseAddr(tt.ip), tt.bits)
		if got.String() != tt.want {
			t.Errorf("Of(%s, %d) = %s, want %s", tt.ip, tt.bits, got, tt.want)
		}
		if !got.Contains(netip.MustParseAddr(tt.ip).Unmap().WithZone("")) {
			t.Errorf("Of(%s, %d) = %s does not contain the address", tt.ip, tt.bits, got)
		}
	}
	if p := Of(netip.Addr{}, 64); p.IsValid() {
		t.Errorf("Of(invalid) = %s, want the invalid prefix", p)
	}
}

// Two addresses of one /64 are one client; the next /64 is another.
func TestOfGroupsOneNetwork(t *testing.T) {
	a := Of(netip.MustParseAddr("2001:db8::1"), 64)
	b := Of(netip.MustParseAddr("2001:db8::ffff:1"), 64)
	c := Of(netip.MustParseAddr("2001:db8:0:1::1"), 64)
	if a != b {
		t.Errorf("one /64 gave two networks: %s and %s", a, b)
	}
	if a == c {
		t.Errorf("two /64s gave one network: %s", a)
	}
}

func TestCheckIPv6Prefix(t *testing.T) {
	for _, bits := range []int{48, 56, 64, 128} {
		if err := CheckIPv6Prefix(bits); err != nil {
			t.Errorf("CheckIPv6Prefix(%d) = %v, want nil", bits, err)
		}
	}
	for _, bits := range []int{-1, 0, 47, 129} {
		if err := CheckIPv6Prefix(bits); err == nil {
			t.Errorf("CheckIPv6Prefix(%d) = nil, want an error", bits)
		}
	}
}
