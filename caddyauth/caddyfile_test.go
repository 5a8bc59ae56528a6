package caddyauth

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/caddy-apitoken/caddy-apitoken/captcha"
	"github.com/caddy-apitoken/caddy-apitoken/tokenstore"
)

var updateGolden = flag.Bool("update", false, "rewrite the expected JSON of the Caddyfile adapt tests")

// goldenSeparator divides a .caddyfiletest file into the Caddyfile and the
// JSON it must adapt to.
const goldenSeparator = "----------"

// TestCaddyfileAdapt adapts every testdata/caddyfile_adapt/*.caddyfiletest
// and compares the result with the JSON after the separator. Run with
// -update to write the JSON of a new file.
func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob("testdata/caddyfile_adapt/*.caddyfiletest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files found (%v)", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			caddyfile, expected, found := strings.Cut(string(data), goldenSeparator+"\n")
			if *updateGolden {
				writeGolden(t, file, caddyfile)
				return
			}
			if !found {
				t.Fatalf("%s has no expected JSON; run go test -update", file)
			}
			if !caddytest.CompareAdapt(t, file, caddyfile, "caddyfile", strings.TrimRight(expected, "\n")) {
				t.Errorf("%s: adapted JSON differs (diff above)", file)
			}
		})
	}
}

func writeGolden(t *testing.T, file, caddyfile string) {
	t.Helper()
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatalf("adapting %s: %v", file, err)
	}
	pretty, err := indentJSON(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte(caddyfile+goldenSeparator+"\n"+pretty+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestCaddyfileErrors checks that bad configuration is refused at adapt
// time with a message naming the subdirective and the value.
func TestCaddyfileErrors(t *testing.T) {
	tests := []struct {
		block string
		want  []string
	}{
		{"store file t.json\nrealm \"a b\"", []string{"realm", `"a b"`}},
		{"store mysql t.db", []string{"store", `"mysql"`}},
		{"store postgres", []string{"store file <path>"}},
		{"store file", []string{"store file <path>"}},
		{"realm x", []string{"store is required"}},
		{"store file t.json\ntest_endpoint whoami", []string{"test_endpoint", `"whoami"`}},
		{"store file t.json\nallow_ips 10.0.0.0/33", []string{"allow_ips", "10.0.0.0/33"}},
		{"store file t.json\nallow_ips nope", []string{"allow_ips", "nope"}},
		{"store file t.json\nanonymous maybe", []string{"anonymous", `"maybe"`}},
		{"store file t.json\nsession_cookies bad;name", []string{"session_cookies", "bad;name"}},
		{"store file t.json\natlassian_headers sometimes", []string{"atlassian_headers", `"sometimes"`}},
		{"store file t.json\ntoken_prefix ca$h", []string{"token_prefix", "ca$h"}},
		{"store file t.json\nmax_lifetime forever", []string{"max_lifetime", `"forever"`}},
		{"store file t.json\ncache_ttl -5s", []string{"cache_ttl", `"-5s"`}},
		{"store file t.json\nkeep_authorization yes", []string{"wrong argument count"}},
		{"store file t.json\nbogus 1", []string{"unrecognized", `"bogus"`}},
		{"store file t.json\nlockout {\nmax_failures lots\n}", []string{"max_failures", `"lots"`}},
		{"store file t.json\nlockout {\nmax_failures -1\n}", []string{"max_failures", `"-1"`}},
		{"store file t.json\nlockout {\nkey ip\n}", []string{"key", `"ip"`}},
		{"store file t.json\nlockout {\nreset_after soon\n}", []string{"reset_after", `"soon"`}},
		{"store file t.json\nlockout {\nip_ban 0\n}", []string{"ip_ban", `"0"`}},
		{"store file t.json\nlockout {\nunlock_path unlock\n}", []string{"unlock_path", `"unlock"`}},
		{"store file t.json\nlockout {\ncaptcha friendlycaptcha k s\n}", []string{"captcha", `"friendlycaptcha"`}},
		{"store file t.json\nlockout {\ncaptcha turnstile sitekey\n}", []string{"captcha"}},
		{"store file t.json\nlockout {\ncaptcha hcaptcha k s verify_url ftp://x\n}", []string{"verify_url", "ftp://x"}},
		{"store file t.json\nlockout {\nbogus\n}", []string{"unrecognized lockout option", `"bogus"`}},
		{"store file t.json\nlockout {\nipv6_prefix 32\n}", []string{"ipv6_prefix", "32", "48 to 128"}},
		{"store file t.json\nlockout {\nipv6_prefix 129\n}", []string{"ipv6_prefix", "129"}},
		{"store file t.json\nlockout {\nipv6_prefix wide\n}", []string{"ipv6_prefix", `"wide"`}},
	}
	for _, tc := range tests {
		caddyfile := ":8080 {\n\tapi_token_auth {\n" + tc.block + "\n\t}\n}\n"
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
		if err == nil {
			t.Errorf("%q: adapted without error", tc.block)
			continue
		}
		for _, want := range tc.want {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%q: error %q does not mention %q", tc.block, err, want)
			}
		}
	}
}

// TestValidateJSON checks the same rules for JSON configs, which skip the
// Caddyfile parser.
func TestValidateJSON(t *testing.T) {
	tests := []struct {
		h    Handler
		want string
	}{
		{Handler{Realm: "x"}, "store: type is required"},
		{Handler{Realm: "x y", Store: fileStore("t.json")}, `realm "x y"`},
		{Handler{Realm: "x", Store: fileStore("t.json"), TestEndpoint: "nope"}, `test_endpoint "nope"`},
		{Handler{Realm: "x", Store: fileStore("t.json"), AllowIPs: []string{"300.1.1.1"}}, "allow_ips"},
		{Handler{Realm: "x", Store: fileStore("t.json"), Anonymous: "maybe"}, `anonymous "maybe"`},
		{Handler{Realm: "x", Store: fileStore("t.json"), TokenPrefix: "a b"}, `token_prefix "a b"`},
		{Handler{Realm: "x", Store: fileStore("t.json"), MaxLifetime: -1}, "max_lifetime"},
		{Handler{Realm: "x", Store: fileStore("t.json"), AllowGroups: []string{""}}, "allow_groups"},
		{Handler{Realm: "x", Store: fileStore("t.json"), Lockout: &captcha.Config{IPv6Prefix: 40}}, "lockout: ipv6_prefix 40"},
	}
	for _, tc := range tests {
		err := tc.h.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want an error containing %q", tc.h, err, tc.want)
		}
	}
}

func fileStore(path string) tokenstore.Config {
	return tokenstore.Config{Type: tokenstore.TypeFile, Path: path}
}

func indentJSON(data []byte) (string, error) {
	var buf bytes.Buffer
	err := json.Indent(&buf, data, "", "\t")
	return buf.String(), err
}
