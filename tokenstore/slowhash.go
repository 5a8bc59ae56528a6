package tokenstore

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"iter"
	weakrand "math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/caddyauth"
	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
	"golang.org/x/sync/singleflight"
)

// Slow password hashes, for credentials imported from other systems
// (SPEC §3). They are written as Caddy's `caddy hash-password` prints
// them, behind a scheme prefix: "bcrypt:$2a$14$…" or
// "argon2id:$argon2id$v=19$m=47104,t=1,p=1$<salt>$<key>". Unlike sha256
// tokens they cannot be found by their digest (each has its own salt), so
// they work with Basic authentication only, where the username narrows the
// candidates to that user's slow-hash tokens (Store.LookupBasic), and each
// candidate is checked with SlowVerifier.
const (
	bcryptScheme   = "bcrypt:"
	argon2idScheme = "argon2id:"
)

// Bounds on the parameters of imported slow hashes. A slow hash is paid on
// every failed Basic attempt for its user (successes are cached), so
// parameters far beyond any recommendation would let a few requests stall
// the server; such hashes are refused when the store loads them, naming
// the token, rather than discovered under load.
const (
	// maxBcryptCost is 4 times the work of Caddy's default cost 14
	// (about a second per check on common hardware).
	maxBcryptCost = 16

	// maxArgon2idMemory (KiB) allows RFC 9106's first recommended
	// setting, 2 GiB.
	maxArgon2idMemory = 2 * 1024 * 1024
	// maxArgon2idTime allows RFC 9106's second recommended setting (3)
	// and OWASP's settings (at most 5) with room to spare.
	maxArgon2idTime = 16
	// Caddy writes 16-byte salts and 32-byte keys. Shorter ones are
	// refused: an empty key would match every secret.
	minArgon2idSalt = 8
	minArgon2idKey  = 16
	maxArgon2idKey  = 1024
)

// hashKind tells how a token's stored hash is checked.
type hashKind uint8

const (
	kindSHA256 hashKind = iota
	kindBcrypt
	kindArgon2id
)

// parseStoredHash checks a token's stored hash: "sha256:<64 hex digits>",
// "bcrypt:<modular crypt form>" or "argon2id:<PHC string>". It returns the
// digest for sha256 hashes (the zero Digest otherwise). Errors never repeat
// the hash: they end up in logs.
func parseStoredHash(s string) (Digest, hashKind, error) {
	switch {
	case strings.HasPrefix(s, sha256Scheme):
		d, err := ParseHash(s)
		return d, kindSHA256, err
	case strings.HasPrefix(s, bcryptScheme):
		return Digest{}, kindBcrypt, checkBcrypt(s[len(bcryptScheme):])
	case strings.HasPrefix(s, argon2idScheme):
		return Digest{}, kindArgon2id, checkArgon2id(s[len(argon2idScheme):])
	}
	return Digest{}, 0, fmt.Errorf("unsupported hash scheme (want %q followed by 64 hex digits, or an imported %q or %q hash as `caddy hash-password` prints it)",
		sha256Scheme, bcryptScheme, argon2idScheme)
}

// bcryptAlphabet is bcrypt's own base64 alphabet.
const bcryptAlphabet = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// checkBcrypt checks the modular crypt form "$2a$14$<53 characters>"
// (versions 2a, 2b and 2y, as golang.org/x/crypto/bcrypt reads them).
func checkBcrypt(mcf string) error {
	const want = "malformed bcrypt hash: want $2a$, $2b$ or $2y$, a two-digit cost, '$' and 53 characters of salt and hash (60 in all)"
	if len(mcf) != 60 {
		return fmt.Errorf("%s; it has %d", want, len(mcf))
	}
	if mcf[0] != '$' || mcf[1] != '2' || !strings.ContainsRune("aby", rune(mcf[2])) || mcf[3] != '$' || mcf[6] != '$' {
		return fmt.Errorf("%s", want)
	}
	if mcf[4] < '0' || mcf[4] > '9' || mcf[5] < '0' || mcf[5] > '9' {
		return fmt.Errorf("%s", want)
	}
	cost := int(mcf[4]-'0')*10 + int(mcf[5]-'0')
	for i := 7; i < len(mcf); i++ {
		if strings.IndexByte(bcryptAlphabet, mcf[i]) < 0 {
			return fmt.Errorf("malformed bcrypt hash: character %d is not in bcrypt's base64 alphabet", i+1)
		}
	}
	if cost < bcrypt.MinCost || cost > maxBcryptCost {
		return fmt.Errorf("bcrypt cost %d is out of range (%d to %d)", cost, bcrypt.MinCost, maxBcryptCost)
	}
	// The same parser that will check secrets against it must accept it.
	if _, err := bcrypt.Cost([]byte(mcf)); err != nil {
		return fmt.Errorf("malformed bcrypt hash: %v", err)
	}
	return nil
}

// checkArgon2id checks the PHC string that `caddy hash-password
// --algorithm argon2id` prints:
// "$argon2id$v=19$m=<KiB>,t=<passes>,p=<threads>$<salt>$<key>", salt and
// key in unpadded standard base64.
func checkArgon2id(phc string) error {
	const want = "malformed argon2id hash: want $argon2id$v=19$m=<KiB>,t=<passes>,p=<threads>$<salt>$<key>"
	parts := strings.Split(phc, "$")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" {
		return fmt.Errorf("%s", want)
	}
	if parts[2] != "v="+strconv.Itoa(argon2.Version) {
		return fmt.Errorf("argon2id hash: version must be v=%d", argon2.Version)
	}
	params := strings.Split(parts[3], ",")
	if len(params) != 3 {
		return fmt.Errorf("%s", want)
	}
	var values [3]uint64 // m, t, p
	for i, name := range []string{"m", "t", "p"} {
		digits, ok := strings.CutPrefix(params[i], name+"=")
		if !ok {
			return fmt.Errorf("%s", want)
		}
		n, err := strconv.ParseUint(digits, 10, 32)
		if err != nil {
			return fmt.Errorf("argon2id hash: parameter %s is not a number", name)
		}
		values[i] = n
	}
	m, t, p := values[0], values[1], values[2]
	switch {
	case p < 1 || p > 255:
		return fmt.Errorf("argon2id hash: p=%d is out of range (1 to 255)", p)
	case t < 1 || t > maxArgon2idTime:
		return fmt.Errorf("argon2id hash: t=%d is out of range (1 to %d)", t, maxArgon2idTime)
	case m < 8*p || m > maxArgon2idMemory:
		return fmt.Errorf("argon2id hash: m=%d is out of range (8×p to %d KiB)", m, maxArgon2idMemory)
	}
	salt, err := base64.RawStdEncoding.Strict().DecodeString(parts[4])
	if err != nil {
		return fmt.Errorf("argon2id hash: salt is not unpadded base64")
	}
	key, err := base64.RawStdEncoding.Strict().DecodeString(parts[5])
	if err != nil {
		return fmt.Errorf("argon2id hash: key is not unpadded base64")
	}
	if len(salt) < minArgon2idSalt {
		return fmt.Errorf("argon2id hash: salt has %d bytes, want at least %d", len(salt), minArgon2idSalt)
	}
	if len(key) < minArgon2idKey || len(key) > maxArgon2idKey {
		return fmt.Errorf("argon2id hash: key has %d bytes, want %d to %d", len(key), minArgon2idKey, maxArgon2idKey)
	}
	// The comparer that will check secrets against it (Caddy's) must
	// read it the same way.
	if _, _, err := caddyauth.DecodeHash([]byte(phc)); err != nil {
		return fmt.Errorf("%s", want)
	}
	return nil
}

// DefaultSlowCacheSize is how many verified (hash, secret) pairs a
// SlowVerifier remembers unless told otherwise.
const DefaultSlowCacheSize = 10000

// SlowVerifier checks secrets against slow password hashes (bcrypt,
// argon2id) and remembers the pairs that matched, so that a client sending
// the same credentials on every request pays the slow hash once rather
// than per request.
//
// Only matches are cached. A cached mismatch would save nothing against
// guessing (every guess is new) and would let a guesser evict the real
// users' entries; a client repeating a wrong secret is stopped by the
// lockout instead. A match is a fact about the hash and the secret alone
// (revocation, expiry and the user's state are checked elsewhere, on every
// request), so entries never go stale; one whose token was re-imported with
// another hash is simply never asked for again, and eventually evicted.
//
// Entries are keyed by SHA-256(salt, stored hash, secret), where salt is
// random per verifier: the cache never holds a secret in clear, and its
// keys cannot be compared across processes or looked up in precomputed
// tables. (A fast digest of a low-entropy password can still be guessed
// offline by someone who can read the process's memory; such a reader
// sees the requests' secrets too.)
//
// Concurrent checks of the same pair run once (singleflight), and at most
// GOMAXPROCS slow hashes run at a time: they are CPU-bound, so more at
// once would only multiply their memory (argon2id allocates its m KiB per
// check) without finishing sooner.
//
// The zero value is ready to use, with a cache of DefaultSlowCacheSize
// entries. A SlowVerifier must not be copied after first use.
type SlowVerifier struct {
	// MaxEntries bounds the cache; when full, a random tenth of it is
	// evicted. 0 means DefaultSlowCacheSize. Set it before first use.
	MaxEntries int

	initOnce sync.Once
	salt     [32]byte
	slots    chan struct{} // one per slow hash allowed to run
	group    singleflight.Group

	mu    sync.Mutex
	index map[Digest]int // key → position in keys
	keys  []Digest

	// Observe, if set, is told whether each slow check was answered from
	// the cache (for metrics). Set it before first use.
	Observe func(cacheHit bool)

	// compare does the slow check; a hook so that tests can count calls.
	compare func(kind hashKind, hash, secret []byte) bool
}

// NewSlowVerifier returns a verifier whose cache holds at most maxEntries
// verified pairs (DefaultSlowCacheSize if maxEntries <= 0).
func NewSlowVerifier(maxEntries int) *SlowVerifier {
	return &SlowVerifier{MaxEntries: maxEntries}
}

func (v *SlowVerifier) init() {
	v.initOnce.Do(func() {
		if v.MaxEntries <= 0 {
			v.MaxEntries = DefaultSlowCacheSize
		}
		if _, err := rand.Read(v.salt[:]); err != nil {
			panic(fmt.Sprintf("reading random bytes: %v", err)) // crypto/rand never fails on supported systems
		}
		v.slots = make(chan struct{}, max(runtime.GOMAXPROCS(0), 1))
		v.index = make(map[Digest]int)
		if v.compare == nil {
			v.compare = slowCompare
		}
	})
}

// Verify reports whether secret is the secret of token t, whose hash
// Prepare has checked. Slow hashes are compared with Caddy's own bcrypt
// and argon2id comparers (golang.org/x/crypto), at most once per (hash,
// secret) pair that matches; sha256 hashes are compared at once in
// constant time. A token that Prepare would refuse never verifies.
func (v *SlowVerifier) Verify(t *Token, secret string) bool {
	kind, hash, ok := splitSlowHash(t.Hash)
	if !ok {
		want, err := ParseHash(t.Hash)
		got := DigestOf(secret)
		return err == nil && subtle.ConstantTimeCompare(want[:], got[:]) == 1
	}
	v.init()
	key := v.cacheKey(t.Hash, secret)
	hit := v.cached(key)
	if v.Observe != nil {
		v.Observe(hit)
	}
	if hit {
		return true
	}
	res, _, _ := v.group.Do(string(key[:]), func() (any, error) {
		// A check of this pair that finished between the look-up above
		// and this flight has cached it.
		if v.cached(key) {
			return true, nil
		}
		// Caddy's comparers trust the hash's parameters (argon2id panics
		// on t=0); a token that did not go through Prepare is checked
		// here. This costs microseconds next to the slow hash.
		if _, _, err := parseStoredHash(t.Hash); err != nil {
			return false, nil
		}
		v.slots <- struct{}{}
		defer func() { <-v.slots }()
		same := v.compare(kind, []byte(hash), []byte(secret))
		if same {
			v.remember(key)
		}
		return same, nil
	})
	return res.(bool)
}

// FakeVerify spends the time of one slow check without deciding
// anything: it compares secret with model, a slow hash stored in the realm
// (SlowHashModel picks it), and throws the result away. The handler calls
// it for a Basic request whose username has no slow-hash token (and whose
// secret matched no sha256 token), instead of answering at once. Without
// it, the response time would tell an attacker which usernames have
// imported bcrypt or argon2id credentials, the only ones worth guessing
// passwords for: a wrong secret would cost a full slow hash for those
// users and microseconds for everyone else.
//
// Caddy's basic_auth compares with a fake hash of its default bcrypt cost
// instead; that matches only realms whose hashes have that cost. A hash of
// the realm itself has the realm's parameters, so the time matches
// whatever they are. Its result is never used or cached, so the compare
// tells no one anything. It waits for a free slot like a real check, so
// that it also takes as long under load.
//
// It costs a real slow hash of CPU: a realm that holds no slow-hash token
// at all has nothing to hide this way, and its handler does not call it.
func (v *SlowVerifier) FakeVerify(model, secret string) {
	kind, hash, ok := splitSlowHash(model)
	if !ok {
		return
	}
	v.init()
	v.slots <- struct{}{}
	defer func() { <-v.slots }()
	v.compare(kind, []byte(hash), []byte(secret))
}

// SlowHashModel picks, among a realm's stored hashes, the slow hash that
// FakeVerify spends its time on: one whose parameters (bcrypt's cost,
// argon2id's memory, passes and threads) are the most common among the
// realm's slow hashes, the first such in the order given, so that an
// unknown user's attempt costs what most users' attempts cost. It returns
// "" when no hash is slow.
func SlowHashModel(hashes iter.Seq[string]) string {
	type candidate struct {
		first string
		n     int
	}
	byParams := map[string]*candidate{}
	var best *candidate
	for stored := range hashes {
		params, ok := slowHashParams(stored)
		if !ok {
			continue
		}
		c := byParams[params]
		if c == nil {
			c = &candidate{first: stored}
			byParams[params] = c
		}
		c.n++
		if best == nil || c.n > best.n {
			best = c
		}
	}
	if best == nil {
		return ""
	}
	return best.first
}

// hashesOf yields the stored hashes of tokens.
func hashesOf(tokens []*Token) iter.Seq[string] {
	return func(yield func(string) bool) {
		for _, t := range tokens {
			if !yield(t.Hash) {
				return
			}
		}
	}
}

// slowHashParams returns what a slow hash's time depends on, as a
// comparable string: "bcrypt $NN" or "argon2id m=…,t=…,p=…". ok is false
// for a hash that is not slow or not well-formed.
func slowHashParams(stored string) (params string, ok bool) {
	kind, hash, ok := splitSlowHash(stored)
	if !ok {
		return "", false
	}
	switch kind {
	case kindBcrypt:
		// "$2a$14$…": the variant does not change the work, the cost does.
		if len(hash) < 7 {
			return "", false
		}
		return "bcrypt " + hash[3:6], true
	case kindArgon2id:
		parts := strings.Split(hash, "$")
		if len(parts) != 6 {
			return "", false
		}
		return "argon2id " + parts[3], true
	}
	return "", false
}

func (v *SlowVerifier) cached(key Digest) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	_, ok := v.index[key]
	return ok
}

// Len returns how many verified pairs are cached.
func (v *SlowVerifier) Len() int {
	v.init()
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.keys)
}

func (v *SlowVerifier) cacheKey(storedHash, secret string) Digest {
	h := sha256.New()
	h.Write(v.salt[:])
	// Length-prefix the hash so that no (hash, secret) pair can be
	// written as another.
	var n [8]byte
	for i, l := 0, uint64(len(storedHash)); i < 8; i++ {
		n[i] = byte(l >> (8 * i))
	}
	h.Write(n[:])
	h.Write([]byte(storedHash))
	h.Write([]byte(secret))
	var d Digest
	h.Sum(d[:0])
	return d
}

// remember caches key, evicting a random tenth of the entries when full
// (as Caddy's basic_auth cache does: cheap, and fair to every entry).
func (v *SlowVerifier) remember(key Digest) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.index[key]; ok {
		return
	}
	if len(v.keys) >= v.MaxEntries {
		for range max(len(v.keys)/10, 1) {
			i := weakrand.IntN(len(v.keys)) //nolint:gosec // eviction needs no secrecy
			last := len(v.keys) - 1
			delete(v.index, v.keys[i])
			if i != last {
				v.keys[i] = v.keys[last]
				v.index[v.keys[i]] = i
			}
			v.keys = v.keys[:last]
		}
	}
	v.index[key] = len(v.keys)
	v.keys = append(v.keys, key)
}

// splitSlowHash returns the kind and the modular crypt or PHC part of a
// slow stored hash; ok is false for any other hash.
func splitSlowHash(stored string) (kind hashKind, hash string, ok bool) {
	if h, ok := strings.CutPrefix(stored, bcryptScheme); ok {
		return kindBcrypt, h, true
	}
	if h, ok := strings.CutPrefix(stored, argon2idScheme); ok {
		return kindArgon2id, h, true
	}
	return 0, "", false
}

// slowCompare checks secret against hash with Caddy's comparers, which
// use golang.org/x/crypto and compare in constant time. An error (a hash
// that Prepare would have refused) is a mismatch.
func slowCompare(kind hashKind, hash, secret []byte) bool {
	var same bool
	var err error
	switch kind {
	case kindBcrypt:
		same, err = caddyauth.BcryptHash{}.Compare(hash, secret)
	case kindArgon2id:
		same, err = caddyauth.Argon2idHash{}.Compare(hash, secret)
	}
	return err == nil && same
}
