package tokenstore

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"strings"
)

// The shape of a generated token, after GitHub's scheme: a recognisable
// prefix, randomness, and a checksum that lets us reject typos and random
// garbage without a store look-up.
const (
	// DefaultPrefix is the prefix of generated tokens unless token_prefix says otherwise.
	DefaultPrefix = "cat_"

	randomLength   = 32
	checksumLength = 6

	base62Alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

	// sha256Scheme prefixes every stored token hash.
	sha256Scheme = "sha256:"
)

// ValidatePrefix checks a token prefix: letters, digits, '_' and '-', so
// that a token stays one word in headers, shells and URLs.
func ValidatePrefix(prefix string) error {
	if prefix == "" {
		return fmt.Errorf("must not be empty")
	}
	for i := 0; i < len(prefix); i++ {
		if c := prefix[i]; !isBase62(c) && c != '_' && c != '-' {
			return fmt.Errorf("%q: only letters, digits, '_' and '-' are allowed", prefix)
		}
	}
	return nil
}

// GenerateSecret returns a new token secret: prefix, 32 random base62
// characters from crypto/rand, and 6 characters of checksum.
func GenerateSecret(prefix string) (string, error) {
	random, err := randomBase62(randomLength)
	if err != nil {
		return "", err
	}
	return prefix + random + checksum(random), nil
}

// randomBase62 returns n characters drawn uniformly from base62Alphabet.
// Bytes at or above 248 (the largest multiple of 62 that fits in a byte)
// are thrown away, so that no character is likelier than another.
func randomBase62(n int) (string, error) {
	out := make([]byte, 0, n)
	buf := make([]byte, n+n/4)
	for len(out) < n {
		if _, err := rand.Read(buf); err != nil {
			return "", fmt.Errorf("reading random bytes: %v", err)
		}
		for _, b := range buf {
			if b >= 248 {
				continue
			}
			out = append(out, base62Alphabet[b%62])
			if len(out) == n {
				break
			}
		}
	}
	return string(out), nil
}

// checksum is the CRC-32 (IEEE) of random, in base62, left-padded with '0'
// to six characters (62^6 > 2^32, so six always suffice).
func checksum(random string) string {
	sum := crc32IEEE(random)
	var out [checksumLength]byte
	for i := checksumLength - 1; i >= 0; i-- {
		out[i] = base62Alphabet[sum%62]
		sum /= 62
	}
	return string(out[:])
}

// checksumMatches is checksum(random) == want without building a string,
// because it runs on every request that carries a prefixed token.
func checksumMatches(random, want string) bool {
	if len(want) != checksumLength {
		return false
	}
	sum := crc32IEEE(random)
	for i := checksumLength - 1; i >= 0; i-- {
		if want[i] != base62Alphabet[sum%62] {
			return false
		}
		sum /= 62
	}
	return true
}

// crc32IEEE is crc32.ChecksumIEEE of a string. Converting the string to
// a []byte for the standard function would cost an allocation on every
// request (the bytes escape through the package's function variable); the
// table-driven loop is fast enough for the 32 bytes of a token.
func crc32IEEE(s string) uint32 {
	crc := ^uint32(0)
	for i := 0; i < len(s); i++ {
		crc = crc32.IEEETable[byte(crc)^s[i]] ^ crc>>8
	}
	return ^crc
}

// PlausibleSecret reports whether secret could be a token worth looking up.
// A secret that carries prefix must be exactly a generated token with a
// correct checksum; anything else is rejected here, before the store is
// asked. Secrets without the prefix (imported from other systems) are
// always plausible.
func PlausibleSecret(secret, prefix string) bool {
	if prefix == "" || !strings.HasPrefix(secret, prefix) {
		return true
	}
	body := secret[len(prefix):]
	if len(body) != randomLength+checksumLength {
		return false
	}
	for i := 0; i < len(body); i++ {
		if !isBase62(body[i]) {
			return false
		}
	}
	return checksumMatches(body[:randomLength], body[randomLength:])
}

func isBase62(c byte) bool {
	return ('0' <= c && c <= '9') || ('A' <= c && c <= 'Z') || ('a' <= c && c <= 'z')
}

// Digest is the SHA-256 of a token secret: what stores index tokens by.
type Digest [sha256.Size]byte

// DigestOf returns the SHA-256 of secret.
func DigestOf(secret string) Digest {
	// sha256.Sum256 keeps its argument on the stack, but a []byte(secret)
	// longer than 32 bytes would still be allocated on the heap: copying
	// into a buffer of our own spares that on every request. Secrets that
	// do not fit (imported ones can be long) take the allocation.
	var buf [128]byte
	if len(secret) <= len(buf) {
		n := copy(buf[:], secret)
		return sha256.Sum256(buf[:n])
	}
	return sha256.Sum256([]byte(secret))
}

// String returns the stored form, "sha256:<hex>".
func (d Digest) String() string {
	return sha256Scheme + hex.EncodeToString(d[:])
}

// HashSecret returns the form in which stores keep a token: "sha256:<hex>".
func HashSecret(secret string) string {
	return DigestOf(secret).String()
}

// ParseHash reads a stored hash of the form "sha256:<64 hex digits>".
func ParseHash(s string) (Digest, error) {
	var d Digest
	hexPart, ok := strings.CutPrefix(s, sha256Scheme)
	if !ok {
		return d, fmt.Errorf("unsupported hash scheme (want %q followed by 64 hex digits)", sha256Scheme)
	}
	if len(hexPart) != 2*sha256.Size {
		return d, fmt.Errorf("sha256 hash must have 64 hex digits, has %d", len(hexPart))
	}
	if _, err := hex.Decode(d[:], []byte(hexPart)); err != nil {
		return d, fmt.Errorf("sha256 hash is not hex: %v", err)
	}
	return d, nil
}

// NewID returns a random public token identifier: safe to log and show.
func NewID() (string, error) {
	return randomBase62(16)
}
