package tokenstore

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// generatedSeed returns a fresh generated secret with prefix, for seeds.
func generatedSeed(f *testing.F, prefix string) string {
	f.Helper()
	s, err := GenerateSecret(prefix)
	if err != nil {
		f.Fatal(err)
	}
	return s
}

// FuzzPlausibleSecret checks that PlausibleSecret never panics and that a
// secret carrying a (valid) prefix passes only when it has exactly a
// generated token's length, alphabet and checksum.
func FuzzPlausibleSecret(f *testing.F) {
	good := generatedSeed(f, DefaultPrefix)
	f.Add(good, DefaultPrefix)
	f.Add(good[:len(good)-1]+"!", DefaultPrefix)
	f.Add(good+"0", DefaultPrefix)
	f.Add(good[:len(good)-1], DefaultPrefix)
	f.Add(generatedSeed(f, "acme-"), "acme-")
	f.Add(good, "")
	f.Add("imported-secret", DefaultPrefix)
	f.Add(DefaultPrefix, DefaultPrefix)
	f.Add(DefaultPrefix+strings.Repeat("\xff", randomLength+checksumLength), DefaultPrefix)
	f.Fuzz(func(t *testing.T, secret, prefix string) {
		plausible := PlausibleSecret(secret, prefix)
		if ValidatePrefix(prefix) != nil || !strings.HasPrefix(secret, prefix) {
			if !plausible && prefix == "" {
				t.Fatalf("PlausibleSecret(%q, %q) = false without a prefix", secret, prefix)
			}
			return
		}
		body := secret[len(prefix):]
		wellFormed := len(body) == randomLength+checksumLength && strings.Trim(body, base62Alphabet) == "" &&
			checksum(body[:randomLength]) == body[randomLength:]
		if plausible != wellFormed {
			t.Fatalf("PlausibleSecret(%q, %q) = %v, want %v", secret, prefix, plausible, wellFormed)
		}
	})
}

// FuzzChecksum checks checksum and checksumMatches against each other on
// arbitrary input.
func FuzzChecksum(f *testing.F) {
	good := generatedSeed(f, "")
	f.Add(good[:randomLength], good[randomLength:])
	f.Add(good[:randomLength], "000000")
	f.Add("", "000000")
	f.Add("\x00\xff", "zzzzzz")
	f.Add("a", "")
	f.Fuzz(func(t *testing.T, random, want string) {
		sum := checksum(random)
		if len(sum) != checksumLength || strings.Trim(sum, base62Alphabet) != "" {
			t.Fatalf("checksum(%q) = %q: not %d base62 characters", random, sum, checksumLength)
		}
		if !checksumMatches(random, sum) {
			t.Fatalf("checksumMatches(%q, checksum(…) = %q) = false", random, sum)
		}
		if got := checksumMatches(random, want); got != (want == sum) {
			t.Fatalf("checksumMatches(%q, %q) = %v, checksum is %q", random, want, got, sum)
		}
		if !PlausibleSecret(DefaultPrefix+good[:randomLength]+checksum(good[:randomLength]), DefaultPrefix) {
			t.Fatal("a generated secret is not plausible")
		}
	})
}

// FuzzParseHash checks that stored hashes parse without panicking, and
// that an accepted sha256 hash is its digest's stored form.
func FuzzParseHash(f *testing.F) {
	f.Add(HashSecret("secret"))
	f.Add(strings.ToUpper(HashSecret("secret")))
	f.Add(sha256Scheme + strings.Repeat("g", 64))
	f.Add(sha256Scheme)
	f.Add("bcrypt:$2a$14$ajq8Q7fbtFRQvXpdCq7Jcuy.Rx1h/L4J60Otx.gyNLbAYctGMJ9tK")
	f.Add("bcrypt:$2a$1")
	f.Add("argon2id:$argon2id$v=19$m=47104,t=1,p=1$c2FsdHNhbHRzYWx0$6CSVs7zaZkTk8hHRSfBmmzwUfYhHPvYzDlfqAhXJRS0")
	f.Add("argon2id:$argon2id$v=19$m=,t=,p=$$")
	f.Add("argon2id:$argon2id$v=19$m=99999999999999999999,t=1,p=1$c2FsdA$a2V5")
	f.Fuzz(func(t *testing.T, s string) {
		if d, kind, err := parseStoredHash(s); err == nil && kind == kindSHA256 {
			if !strings.EqualFold(d.String(), s) {
				t.Fatalf("parseStoredHash(%q) = %s", s, d)
			}
		}
		d, err := ParseHash(s)
		if err != nil {
			return
		}
		if !strings.EqualFold(d.String(), s) {
			t.Fatalf("ParseHash(%q) = %s", s, d)
		}
		if again, err := ParseHash(d.String()); err != nil || again != d {
			t.Fatalf("ParseHash(%s) = %v, %v; want the same digest", d, again, err)
		}
	})
}

// FuzzDecodeDocument feeds arbitrary bytes to the file store's decoder:
// it must not panic, and a document it accepts must survive being written
// back (as the store writes it) and read again unchanged.
func FuzzDecodeDocument(f *testing.F) {
	for _, seed := range []string{
		`{}`,
		`{"version":1,"tokens":[]}`,
		`{"version":2,"tokens":[]}`,
		`{"version":-1}`,
		`{"tokens":[null]}`,
		`{"users":{"alice":null}}`,
		`{"tokens":[]}}`,
		`{"tokens":[]} {}`,
		`{"tokns":[]}`,
		`{"version":1,"users":{"alice":{"groups":["admins"],"disabled":true}},` +
			`"tokens":[{"id":"t1","user":"alice","name":"ci","scope":"read-only","hash":"` + HashSecret("a") + `",` +
			`"created":"2026-01-02T03:04:05Z","expires":"2027-01-02T03:04:05+01:00","allowed_ips":["10.0.0.0/8","::1"],` +
			`"required_headers":{"X-Env":"prod"},"last_used":"2026-02-01T00:00:00Z","last_ips":["10.1.2.3"]}],` +
			`"settings":{"test_endpoint_enabled":false}}`,
		`{"tokens":[{"id":"t1","user":"a","scope":"read-write","hash":"` + HashSecret("a") + `","created":"0001-01-01T00:00:00Z"},` +
			`{"id":"t1","user":"a","scope":"read-write","hash":"` + HashSecret("b") + `","created":"0001-01-01T00:00:00Z"}]}`,
		`{"tokens":[{"id":"t1","user":"a","scope":"read-write","hash":"bcrypt:$2a$14$ajq8Q7fbtFRQvXpdCq7Jcuy.Rx1h/L4J60Otx.gyNLbAYctGMJ9tK","created":"2026-01-01T00:00:00Z"}]}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		doc, err := decodeDocument(data)
		if err != nil {
			return
		}
		snap, err := doc.snapshot()
		if err != nil {
			return
		}
		encoded, err := json.MarshalIndent(doc, "", "  ")
		if err != nil {
			t.Fatalf("decoded %q, but cannot encode it again: %v", data, err)
		}
		doc2, err := decodeDocument(encoded)
		if err != nil {
			t.Fatalf("decoded %q, but not its re-encoding %s: %v", data, encoded, err)
		}
		snap2, err := doc2.snapshot()
		if err != nil {
			t.Fatalf("indexed %q, but not its re-encoding %s: %v", data, encoded, err)
		}
		encoded2, err := json.MarshalIndent(doc2, "", "  ")
		if err != nil || !bytes.Equal(encoded, encoded2) {
			t.Fatalf("re-encoding %q is not stable:\n%s\nthen\n%s (%v)", data, encoded, encoded2, err)
		}
		if len(snap.tokens) != len(snap2.tokens) || len(snap.byDigest) != len(snap2.byDigest) ||
			len(snap.users) != len(snap2.users) || snap.settings.TestEndpointOn() != snap2.settings.TestEndpointOn() {
			t.Fatalf("the snapshot of %q differs from that of its re-encoding %s", data, encoded)
		}
		for i, tok := range snap.tokens {
			tok2 := snap2.tokens[i]
			if tok.ID != tok2.ID || tok.digest != tok2.digest || tok.kind != tok2.kind ||
				!equalPrefixes(tok, tok2) || strings.Join(tok.requiredHeaderNames, "\n") != strings.Join(tok2.requiredHeaderNames, "\n") {
				t.Fatalf("token %d of %q differs after re-encoding: %+v, then %+v", i, data, tok, tok2)
			}
		}
		for name, u := range snap.users {
			if u2, ok := snap2.users[name]; !ok || u.joinedGroups != u2.joinedGroups || u.Disabled != u2.Disabled {
				t.Fatalf("user %q of %q differs after re-encoding", name, data)
			}
		}
	})
}

func equalPrefixes(a, b *Token) bool {
	if len(a.allowedIPs) != len(b.allowedIPs) {
		return false
	}
	for i := range a.allowedIPs {
		if a.allowedIPs[i] != b.allowedIPs[i] {
			return false
		}
	}
	return true
}

// FuzzTokenPrepare decodes one token record from arbitrary JSON and
// prepares it: no panic, and a prepared token has what the request path
// relies on.
func FuzzTokenPrepare(f *testing.F) {
	f.Add(`{"id":"t1","user":"a","scope":"read-only","hash":"` + HashSecret("a") + `"}`)
	f.Add(`{"id":"t1","user":"a","scope":"read-only","hash":"` + HashSecret("a") + `","allowed_ips":["10.0.0.0/33","::ffff:1.2.3.4"]}`)
	f.Add(`{"id":"t1","user":"a","scope":"read-write","hash":"` + HashSecret("a") + `","required_headers":{"":"x","X-A":"1"}}`)
	f.Add(`{"id":"t1","user":"a","scope":"admin","hash":"md5:abc"}`)
	f.Fuzz(func(t *testing.T, data string) {
		var tok Token
		if json.Unmarshal([]byte(data), &tok) != nil {
			return
		}
		if err := tok.Prepare(); err != nil {
			return
		}
		if tok.ID == "" || tok.User == "" || len(tok.allowedIPs) != len(tok.AllowedIPs) ||
			len(tok.requiredHeaderNames) != len(tok.RequiredHeaders) {
			t.Fatalf("prepared %q into %+v", data, tok)
		}
		if (tok.kind == kindSHA256) == tok.SlowHash() {
			t.Fatalf("prepared %q: kind %d but SlowHash() = %v", data, tok.kind, tok.SlowHash())
		}
	})
}
