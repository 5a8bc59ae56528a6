package tokenstore

import (
	"errors"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestScopeCovers(t *testing.T) {
	t.Parallel()
	safe := []string{http.MethodGet, http.MethodHead, http.MethodOptions}
	unsafe := []string{
		http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete,
		http.MethodConnect, http.MethodTrace, "PROPFIND", "",
		"get", "Head", "options", // methods are case-sensitive
	}
	tests := []struct {
		scope Scope
		safe  bool // covers GET, HEAD and OPTIONS
		all   bool // covers everything else too
	}{
		{ScopeReadOnly, true, false},
		{ScopeReadWrite, true, true},
		// A scope that is neither must not grant writes.
		{Scope(""), true, false},
		{Scope("READ-WRITE"), true, false},
	}
	for _, tt := range tests {
		for _, m := range safe {
			if got := tt.scope.Covers(m); got != tt.safe {
				t.Errorf("Scope(%q).Covers(%q) = %v, want %v", tt.scope, m, got, tt.safe)
			}
		}
		for _, m := range unsafe {
			if got := tt.scope.Covers(m); got != tt.all {
				t.Errorf("Scope(%q).Covers(%q) = %v, want %v", tt.scope, m, got, tt.all)
			}
		}
	}
}

func TestParseScope(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    Scope
		wantErr bool
	}{
		{"read-only", ScopeReadOnly, false},
		{"read-write", ScopeReadWrite, false},
		{"", "", true},
		{"READ-ONLY", "", true},
		{"readonly", "", true},
		{"read_write", "", true},
		{"read-write ", "", true},
		{"admin", "", true},
	}
	for _, tt := range tests {
		got, err := ParseScope(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseScope(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseScope(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if err != nil && !strings.Contains(err.Error(), `"`+tt.in+`"`) {
			t.Errorf("ParseScope(%q) error %q does not quote the value", tt.in, err)
		}
	}
}

func TestUsableAndStatus(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 6, 1, 12, 0, 0, 500, time.UTC)
	at := func(d time.Duration) *time.Time { v := now.Add(d); return &v }
	tests := []struct {
		name    string
		expires *time.Time
		revoked *time.Time
		want    string
	}{
		{"no expiry, not revoked", nil, nil, "active"},
		{"expires in a nanosecond", at(time.Nanosecond), nil, "active"},
		{"expires exactly now", at(0), nil, "expired"},
		{"expired a nanosecond ago", at(-time.Nanosecond), nil, "expired"},
		{"expired long ago", at(-365 * 24 * time.Hour), nil, "expired"},
		{"revoked exactly now", nil, at(0), "revoked"},
		{"revoked a nanosecond ago", nil, at(-time.Nanosecond), "revoked"},
		{"revocation scheduled in the future", nil, at(time.Nanosecond), "active"},
		{"revocation scheduled, expiry later", at(2 * time.Hour), at(time.Hour), "active"},
		{"revoked and expired", at(-time.Hour), at(-time.Hour), "revoked"},
		{"revoked, expires later", at(time.Hour), at(-time.Hour), "revoked"},
		{"revocation scheduled, already expired", at(-time.Hour), at(time.Hour), "expired"},
		// The same instant in another zone is the same instant.
		{"expires now in another zone", ptr(now.In(time.FixedZone("X", 3600))), nil, "expired"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tok := &Token{Expires: tt.expires, Revoked: tt.revoked}
			if got := tok.Status(now); got != tt.want {
				t.Errorf("Status = %q, want %q", got, tt.want)
			}
			if got, want := tok.Usable(now), tt.want == "active"; got != want {
				t.Errorf("Usable = %v, want %v", got, want)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestAllowsIP(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		allowed []string
		ip      string // "" is the zero netip.Addr
		want    bool
	}{
		{"empty list allows IPv4", nil, "203.0.113.9", true},
		{"empty list allows IPv6", nil, "2001:db8::1", true},
		{"empty list allows the zero address", nil, "", true},

		{"CIDR inside", []string{"10.0.0.0/8"}, "10.1.2.3", true},
		{"CIDR first address", []string{"10.0.0.0/8"}, "10.0.0.0", true},
		{"CIDR last address", []string{"10.0.0.0/8"}, "10.255.255.255", true},
		{"CIDR just outside", []string{"10.0.0.0/8"}, "11.0.0.0", false},
		{"CIDR IPv4-mapped IPv6 client", []string{"10.0.0.0/8"}, "::ffff:10.1.2.3", true},
		{"CIDR IPv4-mapped IPv6 client outside", []string{"10.0.0.0/8"}, "::ffff:11.1.2.3", false},
		{"CIDR with host bits is masked", []string{"10.1.2.3/8"}, "10.200.0.1", true},
		{"IPv4 CIDR does not match IPv6", []string{"0.0.0.0/0"}, "2001:db8::1", false},
		{"IPv4 /0 matches any IPv4", []string{"0.0.0.0/0"}, "198.51.100.1", true},

		{"single IPv4", []string{"192.0.2.7"}, "192.0.2.7", true},
		{"single IPv4 neighbour", []string{"192.0.2.7"}, "192.0.2.8", false},
		{"single IPv4 mapped client", []string{"192.0.2.7"}, "::ffff:192.0.2.7", true},

		{"IPv6 CIDR inside", []string{"2001:db8::/32"}, "2001:db8:ffff::1", true},
		{"IPv6 CIDR outside", []string{"2001:db8::/32"}, "2001:db9::1", false},
		{"single IPv6", []string{"2001:db8::1"}, "2001:db8::1", true},
		{"single IPv6 neighbour", []string{"2001:db8::1"}, "2001:db8::2", false},
		{"IPv6 CIDR does not match IPv4", []string{"::/0"}, "192.0.2.1", false},

		{"several, second matches", []string{"10.0.0.0/8", "192.0.2.7", "2001:db8::/32"}, "192.0.2.7", true},
		{"several, none matches", []string{"10.0.0.0/8", "192.0.2.7", "2001:db8::/32"}, "172.16.0.1", false},

		// A client address that could not be parsed must not pass an allowlist.
		{"zero address against a list", []string{"0.0.0.0/0", "::/0"}, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tok := validToken("t1", "alice")
			tok.AllowedIPs = tt.allowed
			if err := tok.Prepare(); err != nil {
				t.Fatal(err)
			}
			var ip netip.Addr
			if tt.ip != "" {
				ip = netip.MustParseAddr(tt.ip)
			}
			if got := tok.AllowsIP(ip); got != tt.want {
				t.Errorf("AllowsIP(%s) with allowed_ips %q = %v, want %v", tt.ip, tt.allowed, got, tt.want)
			}
		})
	}
}

func TestParsePrefix(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    string
		wantErr string
	}{
		{"10.0.0.0/8", "10.0.0.0/8", ""},
		{"10.1.2.3/8", "10.0.0.0/8", ""},
		{"192.0.2.7", "192.0.2.7/32", ""},
		{"2001:db8::1", "2001:db8::1/128", ""},
		{"2001:db8::1/32", "2001:db8::/32", ""},
		// Client addresses are compared unmapped, so mapped entries are too.
		{"::ffff:192.0.2.7", "192.0.2.7/32", ""},
		{"::ffff:10.1.0.0/104", "10.0.0.0/8", ""},
		{"", "", "invalid IP address or CIDR"},
		{"banana", "", "invalid IP address or CIDR"},
		{"10.0.0.256", "", "invalid IP address or CIDR"},
		{"10.0.0.0/33", "", "invalid CIDR"},
		{"10.0.0.0/", "", "invalid CIDR"},
		{"/8", "", "invalid CIDR"},
		{"2001:db8::/129", "", "invalid CIDR"},
	}
	for _, tt := range tests {
		got, err := ParsePrefix(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), `"`+tt.in+`"`) {
				t.Errorf("ParsePrefix(%q) error = %v, want one containing %q and the value", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParsePrefix(%q): %v", tt.in, err)
			continue
		}
		if got.String() != tt.want {
			t.Errorf("ParsePrefix(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}

	if got, err := ParsePrefixes(nil); err != nil || got != nil {
		t.Errorf("ParsePrefixes(nil) = %v, %v; want nil, nil", got, err)
	}
	if _, err := ParsePrefixes([]string{"10.0.0.0/8", "nope"}); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("ParsePrefixes with a bad entry: error = %v, want one naming it", err)
	}
}

// validToken returns a token record that passes Prepare.
func validToken(id, user string) Token {
	return Token{
		ID:      id,
		User:    user,
		Scope:   ScopeReadOnly,
		Hash:    HashSecret("secret-of-" + id),
		Created: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC),
	}
}

func TestTokenPrepareErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		edit    func(*Token)
		wantErr []string
	}{
		{"missing id", func(t *Token) { t.ID = "" }, []string{"no id"}},
		{"missing user", func(t *Token) { t.User = "" }, []string{"tok1", "user"}},
		{"missing scope", func(t *Token) { t.Scope = "" }, []string{"tok1", "scope:"}},
		{"bad scope", func(t *Token) { t.Scope = "admin" }, []string{"tok1", "scope:", `"admin"`}},
		{"missing hash", func(t *Token) { t.Hash = "" }, []string{"tok1", "hash:"}},
		{"unknown scheme", func(t *Token) { t.Hash = "md5:" + strings.Repeat("0", 32) }, []string{"tok1", "hash:", "scheme"}},
		{"bare bcrypt without its scheme", func(t *Token) { t.Hash = "$2a$04$" + strings.Repeat("a", 53) }, []string{"tok1", "hash:", "scheme"}},
		{"malformed bcrypt hash", func(t *Token) { t.Hash = "bcrypt:$2a$14$abc" }, []string{"tok1", "hash:", "malformed bcrypt"}},
		{"malformed argon2id hash", func(t *Token) { t.Hash = "argon2id:$argon2id$v=19$m=65536" }, []string{"tok1", "hash:", "malformed argon2id"}},
		{"short hash", func(t *Token) { t.Hash = t.Hash[:len(t.Hash)-2] }, []string{"tok1", "hash:", "64"}},
		{"bad CIDR", func(t *Token) { t.AllowedIPs = []string{"10.0.0.0/8", "10.0.0.0/40"} }, []string{"tok1", "allowed_ips:", "10.0.0.0/40"}},
		{"bad IP", func(t *Token) { t.AllowedIPs = []string{"localhost"} }, []string{"tok1", "allowed_ips:", "localhost"}},
		{"header name with space", func(t *Token) { t.RequiredHeaders = map[string]string{"X Team": "a"} }, []string{"tok1", "required_headers:", `"X Team"`}},
		{"header name with colon", func(t *Token) { t.RequiredHeaders = map[string]string{"X-Team:": "a"} }, []string{"tok1", "required_headers:"}},
		{"header name with newline", func(t *Token) { t.RequiredHeaders = map[string]string{"X-Team\nX-Evil": "a"} }, []string{"tok1", "required_headers:"}},
		{"header name with tab", func(t *Token) { t.RequiredHeaders = map[string]string{"X-\tTeam": "a"} }, []string{"tok1", "required_headers:"}},
		{"empty header name", func(t *Token) { t.RequiredHeaders = map[string]string{"": "a"} }, []string{"tok1", "required_headers:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tok := validToken("tok1", "alice")
			tt.edit(&tok)
			err := tok.Prepare()
			if err == nil {
				t.Fatal("Prepare succeeded, want an error")
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("Prepare error %q does not contain %q", err, want)
				}
			}
		})
	}
}

func TestTokenPrepare(t *testing.T) {
	t.Parallel()
	tok := validToken("tok1", "alice")
	tok.AllowedIPs = []string{"10.0.0.0/8"}
	tok.RequiredHeaders = map[string]string{"X-Team": "a", "Accept": "b", "X-Env": "prod", "x-lower": "c"}
	if err := tok.Prepare(); err != nil {
		t.Fatal(err)
	}
	if tok.Digest() != DigestOf("secret-of-tok1") {
		t.Errorf("Digest() = %s, want %s", tok.Digest(), HashSecret("secret-of-tok1"))
	}
	want := []string{"Accept", "X-Env", "X-Team", "x-lower"}
	if got := tok.RequiredHeaderNames(); !slices.Equal(got, want) {
		t.Errorf("RequiredHeaderNames() = %q, want %q", got, want)
	}
	// Preparing again (every reload does) must not repeat names.
	if err := tok.Prepare(); err != nil {
		t.Fatal(err)
	}
	if got := tok.RequiredHeaderNames(); !slices.Equal(got, want) {
		t.Errorf("RequiredHeaderNames() after a second Prepare = %q, want %q", got, want)
	}
	// Removing the headers and preparing again forgets them.
	tok.RequiredHeaders = nil
	if err := tok.Prepare(); err != nil {
		t.Fatal(err)
	}
	if got := tok.RequiredHeaderNames(); len(got) != 0 {
		t.Errorf("RequiredHeaderNames() without required_headers = %q, want none", got)
	}
	if !tok.AllowsIP(netip.MustParseAddr("10.9.8.7")) || tok.AllowsIP(netip.MustParseAddr("192.0.2.1")) {
		t.Error("AllowsIP does not follow allowed_ips after Prepare")
	}
}

func TestRequiredHeaderNamesSortedStable(t *testing.T) {
	t.Parallel()
	// Map iteration order varies between runs; the sorted result must not.
	headers := make(map[string]string)
	var want []string
	for _, c := range "QWERTYUIOPASDFGHJKLZXCVBNM" {
		name := "X-" + string(c)
		headers[name] = "v"
		want = append(want, name)
	}
	slices.Sort(want)
	for i := 0; i < 20; i++ {
		tok := validToken("tok1", "alice")
		tok.RequiredHeaders = headers
		if err := tok.Prepare(); err != nil {
			t.Fatal(err)
		}
		if got := tok.RequiredHeaderNames(); !slices.Equal(got, want) {
			t.Fatalf("RequiredHeaderNames() = %q, want %q", got, want)
		}
	}
}

func TestUserGroups(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		groups     []string
		ask        []string
		wantAny    bool
		wantJoined string
	}{
		{"no groups", nil, []string{"dev"}, false, ""},
		{"asked for none", []string{"dev"}, nil, false, "dev"},
		{"one match", []string{"dev", "ops"}, []string{"ops"}, true, "dev,ops"},
		{"second asked matches", []string{"dev"}, []string{"ops", "dev"}, true, "dev"},
		{"no match", []string{"dev", "ops"}, []string{"admin", "qa"}, false, "dev,ops"},
		{"case-sensitive", []string{"Dev"}, []string{"dev"}, false, "Dev"},
		{"no partial match", []string{"developers"}, []string{"dev"}, false, "developers"},
		{"empty group name", []string{""}, []string{""}, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			u := &User{Groups: tt.groups}
			if got := u.JoinedGroups(); got != "" {
				t.Errorf("JoinedGroups() before Prepare = %q, want empty", got)
			}
			u.Prepare()
			if got := u.InAnyGroup(tt.ask); got != tt.wantAny {
				t.Errorf("InAnyGroup(%q) with groups %q = %v, want %v", tt.ask, tt.groups, got, tt.wantAny)
			}
			if got := u.JoinedGroups(); got != tt.wantJoined {
				t.Errorf("JoinedGroups() = %q, want %q", got, tt.wantJoined)
			}
		})
	}
}

func TestSettingsTestEndpointOn(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   *bool
		want bool
	}{
		{nil, true},
		{ptr(true), true},
		{ptr(false), false},
	}
	for _, tt := range tests {
		if got := (Settings{TestEndpointEnabled: tt.in}).TestEndpointOn(); got != tt.want {
			t.Errorf("TestEndpointOn() with %v = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestValidateUser(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		user    string
		groups  []string
		wantErr string // "" for valid
	}{
		{"plain", "alice", []string{"dev", "ops"}, ""},
		{"email and spaces", "Alice Smith <alice@example.com>", nil, ""},
		{"unicode", "Zoë", []string{"équipe"}, ""},
		{"no groups", "bob", []string{}, ""},
		{"empty name", "", nil, "user name: must not be empty"},
		{"tab in name", "a\tb", nil, "user name:"},
		{"CR in name", "a\rb", nil, "control character"},
		{"invalid UTF-8", "\xc3", nil, "UTF-8"},
		{"empty group", "alice", []string{""}, "groups[0]: must not be empty"},
		{"newline in group", "alice", []string{"dev", "ops\n"}, "groups[1]:"},
	}
	for _, tt := range tests {
		err := ValidateUser(tt.user, User{Groups: tt.groups})
		if tt.wantErr == "" {
			if err != nil {
				t.Errorf("%s: ValidateUser: %v", tt.name, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: ValidateUser error = %v, want one containing %q matching ErrInvalid", tt.name, err, tt.wantErr)
		}
	}
}
