package tokenstore

import (
	"encoding/base64"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/caddyauth"
	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// caddyArgon2idFake is Caddy's own argon2id fake hash, which its source
// says was written by `caddy hash-password --plaintext "antitiming"
// --algorithm "argon2id"` (m=47104, t=1, p=1): a real output of the
// command, in the format users will import.
const caddyArgon2idFakePlaintext = "antitiming"

// bcryptMCF hashes secret with golang.org/x/crypto/bcrypt at its lowest
// cost, so that tests stay fast.
func bcryptMCF(t testing.TB, secret string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(secret), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

// argon2idPHC hashes secret the way `caddy hash-password --algorithm
// argon2id --argon2id-memory m --argon2id-time t --argon2id-threads p`
// does (Caddy's Argon2idHash.Hash, whose parameters are unexported):
// argon2.IDKey with a 16-byte salt and a 32-byte key, in a PHC string with
// unpadded standard base64.
func argon2idPHC(secret string, salt []byte, m, t uint32, p uint8) string {
	key := argon2.IDKey([]byte(secret), salt, t, m, p, 32)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, m, t, p,
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key))
}

var testSalt = []byte("0123456789abcdef")

// slowToken returns a prepared token of user with the stored hash hash.
func slowToken(t testing.TB, id, user, hash string) Token {
	t.Helper()
	tok := validToken(id, user)
	tok.Hash = hash
	if err := tok.Prepare(); err != nil {
		t.Fatalf("Prepare(%s): %v", id, err)
	}
	return tok
}

// countingVerifier returns a verifier whose slow compares are counted.
func countingVerifier(maxEntries int) (*SlowVerifier, *atomic.Int64) {
	var calls atomic.Int64
	v := NewSlowVerifier(maxEntries)
	v.compare = func(kind hashKind, hash, secret []byte) bool {
		calls.Add(1)
		return slowCompare(kind, hash, secret)
	}
	return v, &calls
}

func TestPrepareAcceptsSlowHashes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		hash string
		slow bool
	}{
		{"sha256", HashSecret("s"), false},
		{"bcrypt 2a at min cost", bcryptScheme + bcryptMCF(t, "s"), true},
		{"bcrypt 2b", bcryptScheme + strings.Replace(bcryptMCF(t, "s"), "$2a$", "$2b$", 1), true},
		{"bcrypt 2y", bcryptScheme + strings.Replace(bcryptMCF(t, "s"), "$2a$", "$2y$", 1), true},
		{"Caddy's bcrypt at its default cost 14", bcryptScheme + string(caddyauth.BcryptHash{}.FakeHash()), true},
		{"argon2id written by caddy hash-password", argon2idScheme + string(caddyauth.Argon2idHash{}.FakeHash()), true},
		{"argon2id with small parameters", argon2idScheme + argon2idPHC("s", testSalt, 64, 1, 1), true},
		{"argon2id with four threads", argon2idScheme + argon2idPHC("s", testSalt, 256, 3, 4), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tok := validToken("tok1", "alice")
			tok.Hash = tt.hash
			if err := tok.Prepare(); err != nil {
				t.Fatalf("Prepare: %v", err)
			}
			if got := tok.SlowHash(); got != tt.slow {
				t.Errorf("SlowHash() = %v, want %v", got, tt.slow)
			}
			if tt.slow && tok.Digest() != (Digest{}) {
				t.Errorf("a slow-hash token has a digest %s, want none", tok.Digest())
			}
			if !tt.slow && tok.Digest() != DigestOf("s") {
				t.Errorf("Digest() = %s, want that of the secret", tok.Digest())
			}
		})
	}
}

func TestPrepareRefusesMalformedSlowHashes(t *testing.T) {
	t.Parallel()
	good := bcryptMCF(t, "s")
	goodArgon := argon2idPHC("s", testSalt, 64, 1, 1)
	b64 := base64.RawStdEncoding.EncodeToString
	argon := func(params, salt, key string) string {
		return argon2idScheme + "$argon2id$v=19$" + params + "$" + salt + "$" + key
	}
	key32, salt16 := b64(make([]byte, 32)), b64(testSalt)
	tests := []struct {
		name    string
		hash    string
		wantErr string
	}{
		{"bcrypt empty", bcryptScheme, "malformed bcrypt hash"},
		{"bcrypt truncated", bcryptScheme + good[:59], "malformed bcrypt hash"},
		{"bcrypt one too long", bcryptScheme + good + "a", "malformed bcrypt hash"},
		{"bcrypt unknown version 2x", bcryptScheme + "$2x$" + good[4:], "malformed bcrypt hash"},
		{"bcrypt version 1", bcryptScheme + "$1a$" + good[4:], "malformed bcrypt hash"},
		{"bcrypt without leading $", bcryptScheme + "x" + good[1:], "malformed bcrypt hash"},
		{"bcrypt cost not digits", bcryptScheme + "$2a$+4$" + good[7:], "malformed bcrypt hash"},
		{"bcrypt cost below the minimum", bcryptScheme + "$2a$03$" + good[7:], "bcrypt cost 3 is out of range"},
		{"bcrypt cost above the bound", bcryptScheme + "$2a$17$" + good[7:], "bcrypt cost 17 is out of range"},
		{"bcrypt character outside its alphabet", bcryptScheme + good[:40] + "+" + good[41:], "character 41"},
		{"bcrypt hash given as argon2id", argon2idScheme + good, "malformed argon2id hash"},
		{"argon2id hash given as bcrypt", bcryptScheme + goodArgon, "malformed bcrypt hash"},
		{"argon2id empty", argon2idScheme, "malformed argon2id hash"},
		{"argon2id variant argon2i", argon2idScheme + strings.Replace(goodArgon, "$argon2id$", "$argon2i$", 1), "malformed argon2id hash"},
		{"argon2id version 16", argon2idScheme + strings.Replace(goodArgon, "v=19", "v=16", 1), "version must be v=19"},
		{"argon2id no leading $", argon2idScheme + goodArgon[1:], "malformed argon2id hash"},
		{"argon2id extra part", argon2idScheme + goodArgon + "$x", "malformed argon2id hash"},
		{"argon2id parameters out of order", argon(" t=1,m=64,p=1", salt16, key32), "malformed argon2id hash"},
		{"argon2id two parameters", argon("m=64,t=1", salt16, key32), "malformed argon2id hash"},
		{"argon2id memory not a number", argon("m=lots,t=1,p=1", salt16, key32), "parameter m is not a number"},
		{"argon2id negative time", argon("m=64,t=-1,p=1", salt16, key32), "parameter t is not a number"},
		{"argon2id time 0", argon("m=64,t=0,p=1", salt16, key32), "t=0 is out of range"},
		{"argon2id time too high", argon("m=64,t=17,p=1", salt16, key32), "t=17 is out of range"},
		{"argon2id threads 0", argon("m=64,t=1,p=0", salt16, key32), "p=0 is out of range"},
		{"argon2id threads 256", argon("m=4096,t=1,p=256", salt16, key32), "p=256 is out of range"},
		{"argon2id memory below 8 per thread", argon("m=15,t=1,p=2", salt16, key32), "m=15 is out of range"},
		{"argon2id memory above 2 GiB", argon("m=2097153,t=1,p=1", salt16, key32), "m=2097153 is out of range"},
		{"argon2id salt padded", argon("m=64,t=1,p=1", salt16+"==", key32), "salt is not unpadded base64"},
		{"argon2id key not base64", argon("m=64,t=1,p=1", salt16, "!!!!"), "key is not unpadded base64"},
		{"argon2id short salt", argon("m=64,t=1,p=1", b64([]byte("1234567")), key32), "salt has 7 bytes"},
		{"argon2id empty key matches everything", argon("m=64,t=1,p=1", salt16, ""), "key has 0 bytes"},
		{"argon2id short key", argon("m=64,t=1,p=1", salt16, b64(make([]byte, 15))), "key has 15 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tok := validToken("tok1", "alice")
			tok.Hash = tt.hash
			err := tok.Prepare()
			if err == nil {
				t.Fatalf("Prepare accepted %q", tt.hash)
			}
			msg := err.Error()
			for _, want := range []string{"token tok1", "hash:", tt.wantErr} {
				if !strings.Contains(msg, want) {
					t.Errorf("Prepare error %q does not contain %q", msg, want)
				}
			}
			// Errors are logged: they must not repeat the hash.
			if _, rest, ok := strings.Cut(tt.hash, ":"); ok && len(rest) > 20 && strings.Contains(msg, rest[len(rest)-20:]) {
				t.Errorf("Prepare error %q repeats the hash", msg)
			}
		})
	}
}

func TestSlowVerifierVerify(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		hash   string
		secret string
	}{
		{"bcrypt", bcryptScheme + bcryptMCF(t, "correct horse"), "correct horse"},
		{"argon2id", argon2idScheme + argon2idPHC("correct horse", testSalt, 64, 1, 1), "correct horse"},
		{"argon2id written by caddy hash-password", argon2idScheme + string(caddyauth.Argon2idHash{}.FakeHash()), caddyArgon2idFakePlaintext},
		{"sha256", HashSecret("cat_whatever"), "cat_whatever"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tok := slowToken(t, "tok1", "alice", tt.hash)
			v, calls := countingVerifier(0)
			slow := tok.SlowHash()
			perCheck := int64(0)
			if slow {
				perCheck = 1
			}

			for _, wrong := range []string{"", tt.secret + "x", strings.ToUpper(tt.secret), tt.secret[1:]} {
				before := calls.Load()
				if v.Verify(&tok, wrong) {
					t.Errorf("Verify(%q) = true, want false", wrong)
				}
				if got := calls.Load() - before; got != perCheck {
					t.Errorf("Verify(%q) made %d slow compares, want %d", wrong, got, perCheck)
				}
			}
			// A wrong secret is not remembered: asking again pays again.
			before := calls.Load()
			v.Verify(&tok, tt.secret+"x")
			if got := calls.Load() - before; got != perCheck {
				t.Errorf("a repeated wrong secret made %d slow compares, want %d", got, perCheck)
			}
			if v.Len() != 0 {
				t.Errorf("%d pairs cached after wrong secrets only, want 0", v.Len())
			}

			before = calls.Load()
			if !v.Verify(&tok, tt.secret) {
				t.Fatal("Verify(right secret) = false")
			}
			if got := calls.Load() - before; got != perCheck {
				t.Errorf("the first right Verify made %d slow compares, want %d", got, perCheck)
			}
			for range 3 {
				if !v.Verify(&tok, tt.secret) {
					t.Fatal("a repeated Verify(right secret) = false")
				}
			}
			if got := calls.Load() - before; got != perCheck {
				t.Errorf("four right Verifies made %d slow compares, want %d: the result was not cached", got, perCheck)
			}
			if want := int(perCheck); v.Len() != want {
				t.Errorf("%d pairs cached, want %d", v.Len(), want)
			}
			// The cache is keyed by the stored hash too: the same secret
			// against another token's hash is checked afresh (and fails).
			other := slowToken(t, "tok2", "alice", bcryptScheme+bcryptMCF(t, "another"))
			if v.Verify(&other, tt.secret) {
				t.Error("Verify of the secret against another token's hash = true")
			}
		})
	}
}

func TestSlowVerifierZeroValue(t *testing.T) {
	t.Parallel()
	var v SlowVerifier
	tok := slowToken(t, "tok1", "alice", bcryptScheme+bcryptMCF(t, "pw"))
	if !v.Verify(&tok, "pw") || v.Verify(&tok, "pw2") {
		t.Error("the zero SlowVerifier does not verify")
	}
	if v.MaxEntries != DefaultSlowCacheSize || v.Len() != 1 {
		t.Errorf("zero value: MaxEntries %d, %d cached; want %d, 1", v.MaxEntries, v.Len(), DefaultSlowCacheSize)
	}
}

func TestSlowVerifierRefusesUnpreparedBadHashes(t *testing.T) {
	t.Parallel()
	// Caddy's argon2id comparer trusts the parameters (argon2 panics on
	// t=0), and one with an empty key would match any secret. A token
	// that skipped Prepare must still not verify, nor crash.
	b64 := base64.RawStdEncoding.EncodeToString
	for _, hash := range []string{
		argon2idScheme + "$argon2id$v=19$m=64,t=0,p=1$" + b64(testSalt) + "$" + b64(make([]byte, 32)),
		argon2idScheme + "$argon2id$v=19$m=64,t=1,p=0$" + b64(testSalt) + "$" + b64(make([]byte, 32)),
		argon2idScheme + "$argon2id$v=19$m=64,t=1,p=1$" + b64(testSalt) + "$",
		bcryptScheme + "$2a$04$short",
		"sha256:nothex",
		"plain",
	} {
		v, calls := countingVerifier(0)
		tok := Token{ID: "tok1", User: "alice", Hash: hash}
		if v.Verify(&tok, "anything") || v.Verify(&tok, "") {
			t.Errorf("Verify against the unprepared hash %q = true", hash)
		}
		if calls.Load() != 0 {
			t.Errorf("Verify ran the slow compare on the bad hash %q", hash)
		}
	}
}

func TestSlowVerifierConcurrentSamePairPaysOnce(t *testing.T) {
	t.Parallel()
	tok := slowToken(t, "tok1", "alice", bcryptScheme+bcryptMCF(t, "pw"))
	v, calls := countingVerifier(0)
	release := make(chan struct{})
	inner := v.compare
	v.compare = func(kind hashKind, hash, secret []byte) bool {
		<-release // hold the first check until every caller has started
		return inner(kind, hash, secret)
	}
	const n = 16
	var started, done sync.WaitGroup
	results := make([]bool, n)
	for i := range n {
		started.Add(1)
		done.Go(func() {
			started.Done()
			results[i] = v.Verify(&tok, "pw")
		})
	}
	started.Wait()
	close(release)
	done.Wait()
	for i, ok := range results {
		if !ok {
			t.Errorf("caller %d: Verify = false", i)
		}
	}
	if got := calls.Load(); got != 1 {
		t.Errorf("%d concurrent Verifies of one pair made %d slow compares, want 1", n, got)
	}
}

func TestSlowVerifierBoundsConcurrency(t *testing.T) {
	t.Parallel()
	limit := runtime.GOMAXPROCS(0)
	v := NewSlowVerifier(0)
	var running, peak atomic.Int64
	gate := make(chan struct{})
	v.compare = func(hashKind, []byte, []byte) bool {
		now := running.Add(1)
		for {
			p := peak.Load()
			if now <= p || peak.CompareAndSwap(p, now) {
				break
			}
		}
		<-gate
		running.Add(-1)
		return false
	}
	tok := slowToken(t, "tok1", "alice", bcryptScheme+bcryptMCF(t, "pw"))
	var wg sync.WaitGroup
	for i := range 3 * limit {
		wg.Go(func() { v.Verify(&tok, fmt.Sprint("guess", i)) })
	}
	wg.Go(func() { v.FakeVerify(tok.Hash, "guess") })
	waitFor(t, 5*time.Second, "the first checks to start", func() bool { return running.Load() == int64(limit) })
	// Give the checks beyond the bound, all ready to go, time to start
	// if nothing held them back.
	time.Sleep(50 * time.Millisecond)
	if p := peak.Load(); p != int64(limit) {
		t.Errorf("%d slow checks ran at once, want GOMAXPROCS (%d)", p, limit)
	}
	close(gate)
	wg.Wait()
	if p := peak.Load(); p != int64(limit) {
		t.Errorf("%d slow checks ran at once, want GOMAXPROCS (%d)", p, limit)
	}
}

func TestSlowVerifierEviction(t *testing.T) {
	t.Parallel()
	v := NewSlowVerifier(10)
	var calls atomic.Int64
	v.compare = func(hashKind, []byte, []byte) bool { calls.Add(1); return true }
	tok := slowToken(t, "tok1", "alice", bcryptScheme+bcryptMCF(t, "pw"))
	for i := range 100 {
		if !v.Verify(&tok, fmt.Sprint("secret", i)) {
			t.Fatal("Verify = false with a compare that always matches")
		}
		if n := v.Len(); n > 10 {
			t.Fatalf("%d pairs cached, want at most 10", n)
		}
		v.mu.Lock()
		for j, k := range v.keys {
			if v.index[k] != j {
				t.Fatalf("after %d entries: keys[%d] indexed at %d", i+1, j, v.index[k])
			}
		}
		if len(v.index) != len(v.keys) {
			t.Fatalf("index has %d entries, keys %d", len(v.index), len(v.keys))
		}
		v.mu.Unlock()
	}
	// The newest pair is always kept.
	before := calls.Load()
	v.Verify(&tok, "secret99")
	if calls.Load() != before {
		t.Error("the pair verified last was evicted")
	}
}

func TestSlowVerifierCacheKey(t *testing.T) {
	t.Parallel()
	a, b := NewSlowVerifier(0), NewSlowVerifier(0)
	a.init()
	b.init()
	if a.cacheKey("h", "s") != a.cacheKey("h", "s") {
		t.Error("cacheKey is not deterministic within a verifier")
	}
	if a.cacheKey("h", "s") == b.cacheKey("h", "s") {
		t.Error("two verifiers share cache keys: the salt is missing")
	}
	// The boundary between hash and secret is part of the key.
	if a.cacheKey("ab", "c") == a.cacheKey("a", "bc") {
		t.Error("cacheKey(ab, c) == cacheKey(a, bc)")
	}
	if k := a.cacheKey("h", "s"); k == DigestOf("s") || k == DigestOf("hs") {
		t.Error("the cache key is a plain digest of the secret")
	}
}

func TestSlowVerifierFakeVerify(t *testing.T) {
	t.Parallel()
	v := NewSlowVerifier(0)
	var calls atomic.Int64
	var gotKind hashKind
	var gotHash []byte
	var mu sync.Mutex
	v.compare = func(kind hashKind, hash, secret []byte) bool {
		calls.Add(1)
		mu.Lock()
		gotKind, gotHash = kind, hash
		mu.Unlock()
		return true // even a "match" must not be cached
	}
	model := bcryptScheme + bcryptMCF(t, "pw")
	v.FakeVerify(model, "pw")
	v.FakeVerify(model, "pw")
	if calls.Load() != 2 {
		t.Errorf("two FakeVerify calls made %d slow compares, want 2 (never cached)", calls.Load())
	}
	if v.Len() != 0 {
		t.Errorf("FakeVerify cached %d pairs", v.Len())
	}
	mu.Lock()
	if gotKind != kindBcrypt || "bcrypt:"+string(gotHash) != model {
		t.Errorf("FakeVerify compared kind %d hash %q, want the model %q", gotKind, gotHash, model)
	}
	mu.Unlock()
	v.FakeVerify(HashSecret("pw"), "pw")
	v.FakeVerify("", "pw")
	if calls.Load() != 2 {
		t.Error("FakeVerify compared with a model that is not a slow hash")
	}
}

// TestFakeVerifyTakesAsLongAsAWrongSecret measures, with the real
// comparers, a wrong secret for a user with a bcrypt credential against
// FakeVerify on the realm's model, for two costs: the medians must be
// close (logged; asserted loosely, the machines being noisy).
func TestFakeVerifyTakesAsLongAsAWrongSecret(t *testing.T) {
	for _, cost := range []int{bcrypt.MinCost, bcrypt.MinCost + 2} {
		h, err := bcrypt.GenerateFromPassword([]byte("right"), cost)
		if err != nil {
			t.Fatal(err)
		}
		tok := slowToken(t, "tok1", "alice", bcryptScheme+string(h))
		other, err := bcrypt.GenerateFromPassword([]byte("other"), cost)
		if err != nil {
			t.Fatal(err)
		}
		model := SlowHashModel(slices.Values([]string{bcryptScheme + string(other)}))
		v := NewSlowVerifier(0)
		const rounds = 41
		var real, fake []time.Duration
		for i := range rounds {
			start := time.Now()
			if v.Verify(&tok, fmt.Sprint("wrong", i)) {
				t.Fatal("a wrong secret verified")
			}
			real = append(real, time.Since(start))
			start = time.Now()
			v.FakeVerify(model, fmt.Sprint("wrong", i))
			fake = append(fake, time.Since(start))
		}
		slices.Sort(real)
		slices.Sort(fake)
		ratio := float64(fake[rounds/2]) / float64(real[rounds/2])
		t.Logf("bcrypt cost %d: median %v for a wrong secret, %v for FakeVerify: ratio %.3f", cost, real[rounds/2], fake[rounds/2], ratio)
		if ratio < 0.67 || ratio > 1.5 {
			t.Errorf("bcrypt cost %d: FakeVerify takes %.2f times a real check", cost, ratio)
		}
	}
}

func TestSlowHashModel(t *testing.T) {
	t.Parallel()
	b4a, b4b := bcryptScheme+bcryptMCF(t, "a"), bcryptScheme+bcryptMCF(t, "b")
	b5, err := bcrypt.GenerateFromPassword([]byte("c"), bcrypt.MinCost+1)
	if err != nil {
		t.Fatal(err)
	}
	a1 := argon2idScheme + argon2idPHC("d", testSalt, 64, 1, 1)
	a2 := argon2idScheme + argon2idPHC("e", testSalt, 64, 2, 1)
	a2b := argon2idScheme + argon2idPHC("f", testSalt, 64, 2, 1)
	fast := HashSecret("g")
	tests := []struct {
		name   string
		hashes []string
		want   string
	}{
		{"none", nil, ""},
		{"only sha256", []string{fast, HashSecret("h")}, ""},
		{"one", []string{fast, b4a}, b4a},
		{"most common cost, first of them", []string{bcryptScheme + string(b5), b4a, fast, b4b}, b4a},
		{"tie: the first", []string{b4a, bcryptScheme + string(b5)}, b4a},
		{"argon2id parameters", []string{a1, a2, b4a, a2b}, a2},
	}
	for _, tt := range tests {
		if got := SlowHashModel(slices.Values(tt.hashes)); got != tt.want {
			t.Errorf("%s: SlowHashModel = %.40q…, want %.40q…", tt.name, got, tt.want)
		}
	}
}
