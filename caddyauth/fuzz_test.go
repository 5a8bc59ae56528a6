package caddyauth

import (
	"encoding/base64"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// FuzzParseAuthorization feeds arbitrary Authorization headers to
// parseAuthorization: it must not panic, and what it accepts must be a
// credential the checks can use.
func FuzzParseAuthorization(f *testing.F) {
	basic := func(s string) string { return "Basic " + base64.StdEncoding.EncodeToString([]byte(s)) }
	for _, seed := range []string{
		"",
		"Bearer",
		"Bearer ",
		"Bearer cat_0123456789abcdefghijABCDEFGHIJ01abcdef",
		"bearer  spaced  ",
		"Bearer a b",
		"Bearer a\tb",
		"BEARER x",
		basic("alice:secret"),
		basic("alice:"),
		basic(":secret"),
		basic("alice"),
		basic("a:b:c"),
		"Basic !!!",
		"Basic  " + base64.StdEncoding.EncodeToString([]byte("bob:pw")) + " ",
		"Digest username=x",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, header string) {
		cred, ok := parseAuthorization(header)
		if !ok {
			if cred != (credentials{}) {
				t.Fatalf("parseAuthorization(%q) refused but returned %+v", header, cred)
			}
			return
		}
		if cred.secret == "" {
			t.Fatalf("parseAuthorization(%q) = %+v: accepted with an empty secret", header, cred)
		}
		if cred.basic {
			if strings.Contains(cred.username, ":") {
				t.Fatalf("parseAuthorization(%q): Basic username %q contains ':'", header, cred.username)
			}
			return
		}
		if cred.username != "" {
			t.Fatalf("parseAuthorization(%q): Bearer credential has a username %q", header, cred.username)
		}
		if strings.ContainsAny(cred.secret, " \t") {
			t.Fatalf("parseAuthorization(%q): Bearer secret %q contains a space", header, cred.secret)
		}
		if strings.TrimSpace(cred.secret) != cred.secret {
			t.Fatalf("parseAuthorization(%q): Bearer secret %q is not trimmed", header, cred.secret)
		}
	})
}

// FuzzCaddyfile parses arbitrary api_token_auth blocks: the parser must not
// panic, and it must accept only what Validate accepts, so that a Caddyfile
// that adapts is never refused later, on load, with a vaguer message.
func FuzzCaddyfile(f *testing.F) {
	for _, seed := range []string{
		"store file /tmp/tokens.json",
		"store sqlite /tmp/tokens.db\nrealm internal\ntoken_prefix acme_\nmax_lifetime 90d\ncache_ttl 5s",
		"store postgres \"postgres://u:p@db/tokens\"\nallow_groups admins ops\nallow_ips 10.0.0.0/8 ::1",
		"store file t.json\nanonymous allow\nkeep_authorization\nsession_cookies sid other\natlassian_headers off",
		"store file t.json\ntest_endpoint off",
		"store file t.json\ntest_endpoint /whoami",
		"store file t.json\nlockout {\nmax_failures 5\nkey user\nreset_after 15m\nip_max_failures 50\nip_ban 1h\nunlock_path /unlock\ncaptcha builtin\n}",
		"store file t.json\nlockout {\ncaptcha turnstile site secret verify_url https://example.com/verify\n}",
		"store file t.json\nallow_groups \"\"",
		"store file t.json\nrealm \"\"",
		"store file \"\"",
		"store file t.json\nmax_lifetime -1s",
		"store file t.json\nlockout",
		"store file t.json\n}\nrealm x",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, block string) {
		tokens, err := caddyfile.Tokenize([]byte("api_token_auth {\n"+block+"\n}\n"), "Caddyfile")
		if err != nil {
			return
		}
		h := new(Handler)
		if err := h.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens)); err != nil {
			return
		}
		// Provision fills in the default realm before Caddy validates.
		if h.Realm == "" {
			h.Realm = DefaultRealm
		}
		if err := h.Validate(); err != nil {
			t.Fatalf("the Caddyfile parser accepted %q, but Validate refuses it: %v", block, err)
		}
	})
}
