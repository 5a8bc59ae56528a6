package tokenstore

import (
	"crypto/sha256"
	"fmt"
	"hash/crc32"
	"math/big"
	"strings"
	"testing"
)

// refChecksum computes the SPEC §3 checksum independently of checksum():
// math/big writes base 62 with the digits 0-9a-zA-Z, so swapping the case
// of its letters gives the alphabet 0-9A-Za-z; then left-pad with '0'.
func refChecksum(random string) string {
	text := new(big.Int).SetUint64(uint64(crc32.ChecksumIEEE([]byte(random)))).Text(62)
	swapped := strings.Map(func(r rune) rune {
		switch {
		case 'a' <= r && r <= 'z':
			return r - 'a' + 'A'
		case 'A' <= r && r <= 'Z':
			return r - 'A' + 'a'
		}
		return r
	}, text)
	return strings.Repeat("0", checksumLength-len(swapped)) + swapped
}

// smallCRCInput finds a fixed 32-character input whose CRC-32 is below
// limit, so that its base62 checksum needs left padding.
func smallCRCInput(t *testing.T, limit uint32) string {
	t.Helper()
	for i := 0; i < 10_000_000; i++ {
		s := padNumber(i)
		if crc32.ChecksumIEEE([]byte(s)) < limit {
			return s
		}
	}
	t.Fatalf("no input with CRC-32 below %d found", limit)
	return ""
}

// padNumber writes i as 32 decimal digits.
func padNumber(i int) string { return fmt.Sprintf("%032d", i) }

func TestChecksumVectors(t *testing.T) {
	t.Parallel()
	// Expected values computed outside Go (Python's zlib.crc32 and a
	// hand-written base62 encoder).
	tests := []struct {
		random string
		want   string
	}{
		{"00000000000000000000000000000000", "2wjyrI"},
		{"abcdefghijklmnopqrstuvwxyzABCDEF", "1mVgZW"},
		{"ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ", "2etF9n"},
		{"zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz", "4W8LJS"},
		{"0123456789ABCDEFGHIJKLMNOPQRSTUV", "1ggZdL"},
		{"00000000000000000000000000000172", "00YwDE"}, // CRC 8326924: two pad digits
		{"00000000000000000000000000009122", "000C2N"}, // CRC 46275: three pad digits
	}
	for _, tt := range tests {
		if got := checksum(tt.random); got != tt.want {
			t.Errorf("checksum(%q) = %q, want %q", tt.random, got, tt.want)
		}
		if got := refChecksum(tt.random); got != tt.want {
			t.Errorf("refChecksum(%q) = %q, want %q (the reference is wrong)", tt.random, got, tt.want)
		}
		if !checksumMatches(tt.random, tt.want) {
			t.Errorf("checksumMatches(%q, %q) = false", tt.random, tt.want)
		}
	}
}

func TestChecksumPadding(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		limit uint32
		zeros int // leading '0's the checksum must have at least
	}{
		{"one pad digit", 916_132_832, 1}, // 62^5
		{"two pad digits", 14_776_336, 2}, // 62^4
		{"three pad digits", 238_328, 3},  // 62^3
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			random := smallCRCInput(t, tt.limit)
			got := checksum(random)
			if want := refChecksum(random); got != want {
				t.Fatalf("checksum(%q) = %q, want %q", random, got, want)
			}
			if len(got) != checksumLength || !strings.HasPrefix(got, strings.Repeat("0", tt.zeros)) {
				t.Errorf("checksum(%q) = %q, want %d characters starting with %d zeros", random, got, checksumLength, tt.zeros)
			}
			if !PlausibleSecret(DefaultPrefix+random+got, DefaultPrefix) {
				t.Errorf("PlausibleSecret rejects a padded checksum %q", got)
			}
			if PlausibleSecret(DefaultPrefix+random+strings.TrimLeft(got, "0"), DefaultPrefix) {
				t.Errorf("PlausibleSecret accepts the unpadded checksum %q", strings.TrimLeft(got, "0"))
			}
		})
	}
}

func TestGenerateSecretFormat(t *testing.T) {
	t.Parallel()
	for _, prefix := range []string{DefaultPrefix, "acme_", ""} {
		for i := 0; i < 200; i++ {
			s, err := GenerateSecret(prefix)
			if err != nil {
				t.Fatalf("GenerateSecret(%q): %v", prefix, err)
			}
			if !strings.HasPrefix(s, prefix) {
				t.Fatalf("GenerateSecret(%q) = %q, missing prefix", prefix, s)
			}
			body := s[len(prefix):]
			if len(body) != randomLength+checksumLength {
				t.Fatalf("GenerateSecret(%q) = %q: body has %d characters, want %d", prefix, s, len(body), randomLength+checksumLength)
			}
			for j := 0; j < len(body); j++ {
				if !strings.ContainsRune(base62Alphabet, rune(body[j])) {
					t.Fatalf("GenerateSecret(%q) = %q: %q is not base62", prefix, s, body[j])
				}
			}
			random, sum := body[:randomLength], body[randomLength:]
			if want := refChecksum(random); sum != want {
				t.Fatalf("GenerateSecret(%q) = %q: checksum %q, want %q", prefix, s, sum, want)
			}
			if !PlausibleSecret(s, prefix) {
				t.Fatalf("PlausibleSecret(%q, %q) = false for a generated token", s, prefix)
			}
		}
	}
}

func TestGenerateSecretUnique(t *testing.T) {
	t.Parallel()
	const n = 1000
	seen := make(map[string]bool, n)
	randoms := make(map[string]bool, n)
	for i := 0; i < n; i++ {
		s, err := GenerateSecret(DefaultPrefix)
		if err != nil {
			t.Fatal(err)
		}
		if seen[s] {
			t.Fatalf("GenerateSecret returned %q twice in %d calls", s, i+1)
		}
		seen[s] = true
		random := s[len(DefaultPrefix) : len(DefaultPrefix)+randomLength]
		if randoms[random] {
			t.Fatalf("random part %q repeated", random)
		}
		randoms[random] = true
	}
}

func TestRandomBase62Uniform(t *testing.T) {
	t.Parallel()
	// 620,000 characters: 10,000 expected per character, standard deviation
	// about 100. A modulo bias (dropping the rejection of bytes >= 248)
	// would put 12,500 on the first eight characters.
	const perChar = 10_000
	s, err := randomBase62(62 * perChar)
	if err != nil {
		t.Fatal(err)
	}
	if len(s) != 62*perChar {
		t.Fatalf("randomBase62 returned %d characters, want %d", len(s), 62*perChar)
	}
	counts := make(map[byte]int, 62)
	for i := 0; i < len(s); i++ {
		counts[s[i]]++
	}
	for i := 0; i < len(base62Alphabet); i++ {
		c := base62Alphabet[i]
		if n := counts[c]; n < perChar*94/100 || n > perChar*106/100 {
			t.Errorf("character %q drawn %d times, want about %d", c, n, perChar)
		}
		delete(counts, c)
	}
	if len(counts) != 0 {
		t.Errorf("characters outside the alphabet drawn: %v", counts)
	}
}

func TestPlausibleSecretSingleChanges(t *testing.T) {
	t.Parallel()
	for _, prefix := range []string{DefaultPrefix, "x-"} {
		for n := 0; n < 5; n++ {
			s, err := GenerateSecret(prefix)
			if err != nil {
				t.Fatal(err)
			}
			body := []byte(s[len(prefix):])
			for i := range body {
				orig := body[i]
				for j := 0; j < len(base62Alphabet); j++ {
					c := base62Alphabet[j]
					if c == orig {
						continue
					}
					body[i] = c
					if changed := prefix + string(body); PlausibleSecret(changed, prefix) {
						t.Fatalf("PlausibleSecret(%q) = true after changing position %d of %q", changed, i, s)
					}
				}
				body[i] = orig
			}
		}
	}
}

func TestPlausibleSecret(t *testing.T) {
	t.Parallel()
	valid, err := GenerateSecret(DefaultPrefix)
	if err != nil {
		t.Fatal(err)
	}
	body := valid[len(DefaultPrefix):]
	random, sum := body[:randomLength], body[randomLength:]
	fixedRandom := "abcdefghijklmnopqrstuvwxyzABCDEF"

	tests := []struct {
		name   string
		secret string
		prefix string
		want   bool
	}{
		{"generated", valid, DefaultPrefix, true},
		{"fixed vector", "cat_" + fixedRandom + "1mVgZW", DefaultPrefix, true},
		{"fixed vector wrong checksum", "cat_" + fixedRandom + "1mVgZX", DefaultPrefix, false},
		{"one character short", valid[:len(valid)-1], DefaultPrefix, false},
		{"one character long", valid + "0", DefaultPrefix, false},
		{"checksum only", DefaultPrefix + sum, DefaultPrefix, false},
		{"prefix only", DefaultPrefix, DefaultPrefix, false},
		{"checksum missing", DefaultPrefix + random, DefaultPrefix, false},
		{"trailing newline", valid + "\n", DefaultPrefix, false},
		{"underscore in body", DefaultPrefix + "_" + body[1:], DefaultPrefix, false},
		{"dash in checksum", DefaultPrefix + random + "-" + sum[1:], DefaultPrefix, false},
		{"space in body", DefaultPrefix + " " + body[1:], DefaultPrefix, false},
		{"high byte in body", DefaultPrefix + "\xff" + body[1:], DefaultPrefix, false},
		{"multi-byte rune replaces one character", DefaultPrefix + "é" + body[1:], DefaultPrefix, false},
		{"multi-byte rune replaces two bytes", DefaultPrefix + "é" + body[2:], DefaultPrefix, false},
		{"doubled prefix", DefaultPrefix + valid, DefaultPrefix, false},

		// Secrets without the prefix are imported from elsewhere: always looked up.
		{"no prefix: other vendor", "ghp_0123456789abcdefghijklmnopqrstuvwxyz", DefaultPrefix, true},
		{"no prefix: random text", "hunter2", DefaultPrefix, true},
		{"no prefix: empty", "", DefaultPrefix, true},
		{"no prefix: part of the prefix", "cat", DefaultPrefix, true},
		{"no prefix: prefix differs in case", "CAT_" + random + "000000", DefaultPrefix, true},
		{"no prefix: generated body alone", body, DefaultPrefix, true},
		{"no prefix: bad checksum but other prefix", "dog_" + random + "000000", DefaultPrefix, true},

		// An empty prefix recognises nothing, so everything is plausible.
		{"empty prefix: generated", valid, "", true},
		{"empty prefix: bad checksum", random + "000000", "", true},
		{"empty prefix: garbage", "!!", "", true},

		// A custom prefix.
		{"custom prefix: default-prefixed bad token", "cat_" + random + "000000", "acme_", true},
		{"custom prefix: bad checksum", "acme_" + random + "000000", "acme_", false},
		{"custom prefix: good", "acme_" + body, "acme_", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := PlausibleSecret(tt.secret, tt.prefix); got != tt.want {
				t.Errorf("PlausibleSecret(%q, %q) = %v, want %v", tt.secret, tt.prefix, got, tt.want)
			}
		})
	}
}

func TestCustomPrefix(t *testing.T) {
	t.Parallel()
	s, err := GenerateSecret("acme_")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(s, "acme_") || len(s) != len("acme_")+randomLength+checksumLength {
		t.Fatalf("GenerateSecret(%q) = %q", "acme_", s)
	}
	if !PlausibleSecret(s, "acme_") {
		t.Errorf("PlausibleSecret(%q, %q) = false", s, "acme_")
	}
	broken := s[:len(s)-1] + string(otherBase62(s[len(s)-1]))
	if PlausibleSecret(broken, "acme_") {
		t.Errorf("PlausibleSecret(%q, %q) = true for a wrong checksum", broken, "acme_")
	}
	// Under the default prefix, the same broken token is not recognised as
	// one of ours, so it is looked up.
	if !PlausibleSecret(broken, DefaultPrefix) {
		t.Errorf("PlausibleSecret(%q, %q) = false for a token without the prefix", broken, DefaultPrefix)
	}
}

// otherBase62 returns a base62 character different from c.
func otherBase62(c byte) byte {
	if c == '0' {
		return '1'
	}
	return '0'
}

func TestHashSecret(t *testing.T) {
	t.Parallel()
	tests := []struct {
		secret string
		want   string
	}{
		// FIPS 180-2 test vectors.
		{"abc", "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
		{"", "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
	}
	for _, tt := range tests {
		if got := HashSecret(tt.secret); got != tt.want {
			t.Errorf("HashSecret(%q) = %q, want %q", tt.secret, got, tt.want)
		}
		if got := DigestOf(tt.secret).String(); got != tt.want {
			t.Errorf("DigestOf(%q).String() = %q, want %q", tt.secret, got, tt.want)
		}
		d, err := ParseHash(tt.want)
		if err != nil {
			t.Errorf("ParseHash(%q): %v", tt.want, err)
		} else if d != DigestOf(tt.secret) {
			t.Errorf("ParseHash(%q) = %x, want %x", tt.want, d, DigestOf(tt.secret))
		}
	}
}

func TestParseHashRoundTrip(t *testing.T) {
	t.Parallel()
	for i := 0; i < 50; i++ {
		s, err := GenerateSecret(DefaultPrefix)
		if err != nil {
			t.Fatal(err)
		}
		h := HashSecret(s)
		d, err := ParseHash(h)
		if err != nil {
			t.Fatalf("ParseHash(%q): %v", h, err)
		}
		if d != DigestOf(s) || d.String() != h {
			t.Fatalf("ParseHash(HashSecret(s)) = %s, want %s", d, h)
		}
	}
	// Upper-case hex digits are hex digits.
	upper := "sha256:" + strings.ToUpper(strings.TrimPrefix(HashSecret("abc"), "sha256:"))
	d, err := ParseHash(upper)
	if err != nil {
		t.Fatalf("ParseHash(%q): %v", upper, err)
	}
	if d != DigestOf("abc") {
		t.Errorf("ParseHash(%q) = %s, want %s", upper, d, HashSecret("abc"))
	}
}

func TestParseHashErrors(t *testing.T) {
	t.Parallel()
	hexPart := strings.TrimPrefix(HashSecret("abc"), "sha256:")
	tests := []struct {
		name    string
		in      string
		wantErr string
	}{
		{"empty", "", "unsupported hash scheme"},
		{"bare hex", hexPart, "unsupported hash scheme"},
		{"sha512 scheme", "sha512:" + hexPart, "unsupported hash scheme"},
		{"upper-case scheme", "SHA256:" + hexPart, "unsupported hash scheme"},
		{"bcrypt", "bcrypt:$2a$14$ajq8Q7fbtFRQvXpdCq7Jcuy.Rx1h/L4J60Otx.gyNLbAYctGMJ9tK", "unsupported hash scheme"},
		{"space before", " sha256:" + hexPart, "unsupported hash scheme"},
		{"no digits", "sha256:", "has 0"},
		{"63 digits", "sha256:" + hexPart[1:], "has 63"},
		{"65 digits", "sha256:" + hexPart + "0", "has 65"},
		{"trailing newline", "sha256:" + hexPart[1:] + "\n", "not hex"},
		{"non-hex digit", "sha256:" + hexPart[:63] + "g", "not hex"},
		{"base64 instead of hex", "sha256:" + strings.Repeat("A+/=", 16), "not hex"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d, err := ParseHash(tt.in)
			if err == nil {
				t.Fatalf("ParseHash(%q) = %s, want an error", tt.in, d)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseHash(%q) error %q, want it to contain %q", tt.in, err, tt.wantErr)
			}
		})
	}
}

func TestNewID(t *testing.T) {
	t.Parallel()
	seen := make(map[string]bool)
	for i := 0; i < 500; i++ {
		id, err := NewID()
		if err != nil {
			t.Fatal(err)
		}
		if len(id) != 16 || strings.Trim(id, base62Alphabet) != "" {
			t.Fatalf("NewID() = %q, want 16 base62 characters", id)
		}
		if seen[id] {
			t.Fatalf("NewID() returned %q twice", id)
		}
		seen[id] = true
	}
}

func TestValidatePrefix(t *testing.T) {
	t.Parallel()
	tests := []struct {
		prefix  string
		wantErr string
	}{
		{DefaultPrefix, ""},
		{"acme-", ""},
		{"ACME_2_", ""},
		{"x", ""},
		{"_", ""},
		{"", "must not be empty"},
		{"cat:", `"cat:"`},
		{"cat ", `"cat "`},
		{"cat.", `"cat."`},
		{"cat/", `"cat/"`},
		{"cat+", `"cat+"`},
		{"cät_", "only letters"},
		{"cat\n", "only letters"},
	}
	for _, tt := range tests {
		err := ValidatePrefix(tt.prefix)
		if tt.wantErr == "" {
			if err != nil {
				t.Errorf("ValidatePrefix(%q): %v", tt.prefix, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("ValidatePrefix(%q) error = %v, want one containing %q", tt.prefix, err, tt.wantErr)
		}
	}
}

// TestAllocationFreeHelpers checks the request path's own CRC-32 and
// SHA-256 helpers against the standard functions, on both sides of the
// digest's buffer size.
func TestAllocationFreeHelpers(t *testing.T) {
	for _, n := range []int{0, 1, 31, 32, 33, 127, 128, 129, 1000} {
		s := strings.Repeat("aZ9", n)[:n]
		if got, want := crc32IEEE(s), crc32.ChecksumIEEE([]byte(s)); got != want {
			t.Errorf("crc32IEEE(%d bytes) = %08x, want %08x", n, got, want)
		}
		if got, want := DigestOf(s), Digest(sha256.Sum256([]byte(s))); got != want {
			t.Errorf("DigestOf(%d bytes) = %s, want %s", n, got, want)
		}
	}
	secret, err := GenerateSecret("tok_")
	if err != nil {
		t.Fatal(err)
	}
	if allocs := testing.AllocsPerRun(100, func() {
		if !PlausibleSecret(secret, "tok_") {
			t.Fatal("a generated secret is not plausible")
		}
		_ = DigestOf(secret)
	}); allocs != 0 {
		t.Errorf("checking and hashing a token allocates %v times, want 0", allocs)
	}
}
