package captcha

import (
	"container/list"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"strings"
	"sync"
	"time"

	dchest "github.com/dchest/captcha"
)

// Defaults of a PuzzleStore.
const (
	// DefaultPuzzleTTL is how long a builtin CAPTCHA can be answered.
	DefaultPuzzleTTL = 10 * time.Minute
	// DefaultMaxPuzzles bounds the live puzzles; the oldest is evicted
	// first, so a flood of page loads costs memory only up to this.
	DefaultMaxPuzzles = 10000
	// PuzzleDigits is the length of a builtin CAPTCHA answer.
	PuzzleDigits = dchest.DefaultLen
)

// PuzzleStore keeps the answers of builtin CAPTCHAs: puzzle id -> digits.
// A puzzle is single-use (Solve consumes it, right or wrong) and expires
// after its TTL; at most max are kept, evicting the oldest. It is safe for
// concurrent use.
//
// The answers live in memory only: a puzzle shown by one server must be
// answered on the same server (and a restart forgets them; the user loads
// the page again).
type PuzzleStore struct {
	ttl time.Duration
	max int
	now func() time.Time

	mu    sync.Mutex
	byID  map[string]*list.Element // of *puzzle
	order *list.List               // oldest first; with one TTL, also the expiry order
}

type puzzle struct {
	id      string
	digits  []byte // values 0-9, not ASCII
	expires time.Time
}

// NewPuzzleStore returns a store whose puzzles expire after ttl (default
// DefaultPuzzleTTL when ttl <= 0), holding at most max of them (default
// DefaultMaxPuzzles when max <= 0). now is the clock (default time.Now);
// tests pass their own.
func NewPuzzleStore(ttl time.Duration, max int, now func() time.Time) *PuzzleStore {
	if ttl <= 0 {
		ttl = DefaultPuzzleTTL
	}
	if max <= 0 {
		max = DefaultMaxPuzzles
	}
	if now == nil {
		now = time.Now
	}
	return &PuzzleStore{
		ttl:   ttl,
		max:   max,
		now:   now,
		byID:  make(map[string]*list.Element),
		order: list.New(),
	}
}

// New makes a puzzle of PuzzleDigits random digits and returns its id: 128
// random bits, URL-safe base64, so that ids cannot be guessed.
func (s *PuzzleStore) New() (id string) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		// crypto/rand does not fail on supported platforms (Go 1.24+
		// crashes the program itself rather than return an error).
		panic("captcha: reading random bytes: " + err.Error())
	}
	id = base64.RawURLEncoding.EncodeToString(b[:])
	p := &puzzle{id: id, digits: dchest.RandomDigits(PuzzleDigits)}

	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	p.expires = now.Add(s.ttl)
	s.expireLocked(now)
	for s.order.Len() >= s.max {
		s.removeLocked(s.order.Front())
	}
	s.byID[id] = s.order.PushBack(p)
	return id
}

// Digits returns a copy of the puzzle's digits (values 0-9), to render its
// image or audio. It does not consume the puzzle. false: unknown or expired.
func (s *PuzzleStore) Digits(id string) ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.liveLocked(id)
	if !ok {
		return nil, false
	}
	return append([]byte(nil), p.digits...), true
}

// Solve reports whether answer is the puzzle's answer, and consumes the
// puzzle whatever the answer, so that each puzzle gets one guess. An
// unknown or expired id is wrong. Spaces in the answer are ignored ("123
// 456" is fine); anything else that is not a digit makes it wrong. The
// digits are compared in constant time.
func (s *PuzzleStore) Solve(id, answer string) bool {
	s.mu.Lock()
	p, ok := s.liveLocked(id)
	if ok {
		s.removeLocked(s.byID[id])
	}
	s.mu.Unlock()
	if !ok {
		return false
	}
	got, ok := parseDigits(answer)
	if !ok {
		return false
	}
	// The length of an answer is no secret (always PuzzleDigits), so the
	// early return on a length mismatch inside ConstantTimeCompare is fine.
	return subtle.ConstantTimeCompare(got, p.digits) == 1
}

// Peek returns the answer of a live puzzle as a string of digits without
// consuming it. It is for tests only (a test plays the user who reads the
// image); the unlock page never calls it.
func (s *PuzzleStore) Peek(id string) (string, bool) {
	d, ok := s.Digits(id)
	if !ok {
		return "", false
	}
	for i := range d {
		d[i] += '0'
	}
	return string(d), true
}

// Len returns the number of puzzles held, expired ones included until
// they are swept.
func (s *PuzzleStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.order.Len()
}

// liveLocked returns the puzzle if it exists and has not expired; an
// expired one is removed.
func (s *PuzzleStore) liveLocked(id string) (*puzzle, bool) {
	e, ok := s.byID[id]
	if !ok {
		return nil, false
	}
	p := e.Value.(*puzzle)
	if !s.now().Before(p.expires) {
		s.removeLocked(e)
		return nil, false
	}
	return p, true
}

// expireLocked drops the expired puzzles at the front of the queue.
func (s *PuzzleStore) expireLocked(now time.Time) {
	for e := s.order.Front(); e != nil; e = s.order.Front() {
		if now.Before(e.Value.(*puzzle).expires) {
			return
		}
		s.removeLocked(e)
	}
}

func (s *PuzzleStore) removeLocked(e *list.Element) {
	p := s.order.Remove(e).(*puzzle)
	delete(s.byID, p.id)
}

// parseDigits turns "123 456" into []byte{1,2,3,4,5,6}; false if a
// character other than a digit or white space occurs, or if there are no
// digits.
func parseDigits(answer string) ([]byte, bool) {
	out := make([]byte, 0, PuzzleDigits)
	for _, r := range answer {
		switch {
		case r >= '0' && r <= '9':
			out = append(out, byte(r-'0'))
		case strings.ContainsRune(" \t\r\n", r):
		default:
			return nil, false
		}
	}
	return out, len(out) > 0
}
