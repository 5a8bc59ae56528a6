package captcha

import (
	"bytes"
	"container/list"
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/base64"
	"errors"
	"html/template"
	"math"
	"net/http"
	"net/netip"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	dchest "github.com/dchest/captcha"
	"go.uber.org/zap"
)

// What the unlock page says. The page says nothing else about the outcome;
// in particular the same text answers an unknown user and a wrong token,
// and success reads the same whether or not a challenge was active, so the
// page tells no more than the test endpoint does.
const (
	// A right CAPTCHA answer and a valid token: the challenge of that user
	// at this client IP (or of the user, with `key user`) is gone.
	MsgCleared = "The CAPTCHA challenge is cleared. You can use your API token again."
	// A wrong, expired, already used or missing CAPTCHA answer.
	MsgCaptchaWrong = "The CAPTCHA answer was wrong. Try again with the new CAPTCHA."
	// A right CAPTCHA answer with an unknown user, a wrong, revoked or
	// expired token, a token of another user, or empty fields.
	MsgInvalidCredentials = "The username or API token is not valid."
	// The CAPTCHA provider could not be asked (timeout, network error,
	// unexpected answer). Never an unlock.
	MsgCaptchaUnverified = "Could not verify the CAPTCHA, try again."
	// The token store could not be asked (status 503).
	MsgStoreUnavailable = "Token store unavailable, try again later."
	// Too many POSTs from the client's address (status 429).
	MsgTooManyAttempts = "Too many unlock attempts from your IP address. Wait a few minutes, then try again."
	// The explanation above the form.
	MsgExplain = "Too many failed attempts with an API token put the account under a CAPTCHA challenge: requests that name the username are refused, even with a valid token, until the challenge is cleared. To clear it, enter your username and one of your valid API tokens, and solve the CAPTCHA."
)

// Limits of the unlock page.
const (
	// UnlockPostLimit POSTs are allowed per client address in each
	// UnlockPostWindow; more answer 429 with Retry-After. An IPv6 client
	// is counted per /64, the block one host usually has.
	UnlockPostLimit  = 10
	UnlockPostWindow = 10 * time.Minute
	// maxLimitedAddrs bounds the rate limiter's memory; when full, the
	// oldest window is forgotten.
	maxLimitedAddrs = 10000
	// maxUnlockForm bounds a POSTed form.
	maxUnlockForm = 16 << 10
)

// Clearer clears the CAPTCHA challenge of user at client IP ip (how the
// key is formed — user or user+ip — is the Clearer's business). Returns
// whether a challenge was active.
type Clearer interface {
	ClearChallenge(user string, ip netip.Addr) bool
}

// TokenChecker reports whether secret is a valid (existing, unrevoked,
// unexpired) token owned by user — SPEC §4 check 4. err != nil means the
// store could not be asked.
type TokenChecker func(ctx context.Context, user, secret string) (bool, error)

// UnlockPage serves the self-service unlock page (SPEC §7): a form asking
// for the username, an API token and a CAPTCHA; a right CAPTCHA and a valid
// token of that user clear the user's challenge.
//
// With the builtin CAPTCHA the page needs no JavaScript and no third
// party: the image and its audio alternative are served by the page itself
// under <unlock_path>/captcha/<id>.png and .wav. With turnstile, hcaptcha or
// recaptcha the page embeds the provider's widget and verifies its answer
// with the provider's siteverify API.
//
// Every response carries a strict Content-Security-Policy (no inline
// script; the one style block carries a per-response nonce), nosniff,
// no-referrer, no-store and DENY framing.
type UnlockPage struct {
	// VerifyTimeout bounds a siteverify call. Default:
	// DefaultVerifyTimeout. Set before serving.
	VerifyTimeout time.Duration
	// Client makes siteverify calls; it must not follow redirects (the
	// default does not). Set before serving.
	Client *http.Client
	// Now is the clock of the POST rate limit. Default: time.Now. Set
	// before serving.
	Now func() time.Time

	path      string // unlock_path
	assetBase string // unlock_path + "/captcha/"
	provider  Provider
	widget    *widget // nil for builtin
	puzzles   *PuzzleStore
	clear     Clearer
	check     TokenChecker
	logger    *zap.Logger
	limiter   *addrLimiter
}

// NewUnlockPage returns the unlock page of s. puzzles keeps the builtin
// CAPTCHA answers (one is made if nil); clear and check are required.
func NewUnlockPage(s Settings, puzzles *PuzzleStore, clear Clearer, check TokenChecker, logger *zap.Logger) *UnlockPage {
	if logger == nil {
		logger = zap.NewNop()
	}
	p := &UnlockPage{
		VerifyTimeout: DefaultVerifyTimeout,
		Client:        newVerifyClient(),
		Now:           time.Now,
		path:          s.UnlockPath,
		provider:      s.Captcha,
		puzzles:       puzzles,
		clear:         clear,
		check:         check,
		logger:        logger,
		limiter:       newAddrLimiter(UnlockPostLimit, UnlockPostWindow, maxLimitedAddrs),
	}
	if p.path == "" {
		p.path = DefaultUnlockPath
	}
	p.assetBase = strings.TrimSuffix(p.path, "/") + "/captcha/"
	if w, ok := widgets[p.provider.Name]; ok {
		p.widget = &w
	} else {
		p.provider = Provider{Name: ProviderBuiltin}
	}
	if p.puzzles == nil {
		p.puzzles = NewPuzzleStore(0, 0, nil)
	}
	return p
}

// ServeHTTP serves GET/POST s.UnlockPath, and for builtin the image and
// audio at s.UnlockPath+"/captcha/<id>.png" and ".wav". clientIP is Caddy's
// client IP (the caller computes it). It returns handled=false, having
// written nothing, for paths it does not own.
func (p *UnlockPage) ServeHTTP(w http.ResponseWriter, r *http.Request, clientIP netip.Addr) (handled bool) {
	switch {
	case r.URL.Path == p.path:
		switch r.Method {
		case http.MethodGet:
			p.render(w, http.StatusOK, p.formPage("", ""))
		case http.MethodPost:
			p.post(w, r, clientIP)
		default:
			p.plain(w, http.StatusMethodNotAllowed, "GET, POST")
		}
		return true
	case p.widget == nil && strings.HasPrefix(r.URL.Path, p.assetBase):
		p.asset(w, r, strings.TrimPrefix(r.URL.Path, p.assetBase))
		return true
	}
	return false
}

// post handles a submitted form: rate limit, then the CAPTCHA, then the
// token; only a right CAPTCHA lets the token be checked, so the page is no
// faster a token oracle than the CAPTCHA allows.
func (p *UnlockPage) post(w http.ResponseWriter, r *http.Request, clientIP netip.Addr) {
	if ok, wait := p.limiter.allow(clientIP, p.Now()); !ok {
		secs := int(math.Ceil(wait.Seconds()))
		if secs < 1 {
			secs = 1
		}
		p.logger.Info("unlock page: too many attempts",
			zap.String("client_ip", addrString(clientIP)),
			zap.Int("retry_after_s", secs))
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		p.render(w, http.StatusTooManyRequests, pageData{
			Result:     MsgTooManyAttempts,
			ResultKind: "error",
			Wait:       waitText(secs),
			Again:      true,
		})
		return
	}

	r.Body = http.MaxBytesReader(w, r.Body, maxUnlockForm)
	if err := r.ParseForm(); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			p.plain(w, http.StatusRequestEntityTooLarge, "")
		} else {
			p.plain(w, http.StatusBadRequest, "")
		}
		return
	}
	// Only the body counts: credentials in a URL would end up in logs.
	user := strings.TrimSpace(r.PostForm.Get("username"))
	token := strings.TrimSpace(r.PostForm.Get("token"))
	ipField := zap.String("client_ip", addrString(clientIP))

	solved, err := p.solved(r, clientIP)
	if err != nil {
		p.logger.Error("unlock page: could not verify the CAPTCHA with its provider",
			zap.String("provider", p.provider.Name), ipField, zap.Error(err))
		p.render(w, http.StatusOK, p.formPage(MsgCaptchaUnverified, "error"))
		return
	}
	if !solved {
		p.logger.Info("unlock failed", zap.String("reason", "captcha_wrong"), zap.String("user", user), ipField)
		p.render(w, http.StatusOK, p.formPage(MsgCaptchaWrong, "error"))
		return
	}

	valid := false
	if user != "" && token != "" {
		valid, err = p.check(r.Context(), user, token)
		if err != nil {
			p.logger.Error("unlock page: token store unavailable", zap.String("user", user), ipField, zap.Error(err))
			p.render(w, http.StatusServiceUnavailable, p.formPage(MsgStoreUnavailable, "error"))
			return
		}
	}
	if !valid {
		p.logger.Info("unlock failed", zap.String("reason", "token_invalid"), zap.String("user", user), ipField)
		p.render(w, http.StatusOK, p.formPage(MsgInvalidCredentials, "error"))
		return
	}

	// The lockout logs the end of an active challenge at INFO, once; this
	// line only traces the page.
	active := p.clear.ClearChallenge(user, clientIP)
	p.logger.Debug("CAPTCHA challenge cleared on the unlock page",
		zap.String("user", user), ipField, zap.Bool("challenge_was_active", active))
	p.render(w, http.StatusOK, pageData{Result: MsgCleared, ResultKind: "success"})
}

// solved checks the CAPTCHA part of the form. An error means the provider
// could not be asked.
func (p *UnlockPage) solved(r *http.Request, clientIP netip.Addr) (bool, error) {
	if p.widget == nil {
		return p.puzzles.Solve(r.PostForm.Get("puzzle"), r.PostForm.Get("answer")), nil
	}
	verifyURL := p.provider.VerifyURL
	if verifyURL == "" {
		verifyURL = p.widget.verifyURL
	}
	remote := ""
	if clientIP.IsValid() {
		remote = clientIP.Unmap().String()
	}
	client := p.Client
	if client == nil {
		client = newVerifyClient()
	}
	return siteVerify(r.Context(), client, verifyURL, p.provider.Secret, r.PostForm.Get(p.widget.field), remote, p.VerifyTimeout)
}

// asset serves a builtin CAPTCHA's image (<id>.png) or audio (<id>.wav).
func (p *UnlockPage) asset(w http.ResponseWriter, r *http.Request, name string) {
	ext := path.Ext(name)
	id := strings.TrimSuffix(name, ext)
	if id == "" || strings.Contains(id, "/") || (ext != ".png" && ext != ".wav") {
		p.plain(w, http.StatusNotFound, "")
		return
	}
	if r.Method != http.MethodGet {
		p.plain(w, http.StatusMethodNotAllowed, "GET")
		return
	}
	digits, ok := p.puzzles.Digits(id)
	if !ok {
		p.plain(w, http.StatusNotFound, "")
		return
	}
	// dchest/captcha derives the picture's and the sound's randomness from
	// the id and digits, so reloading shows the same CAPTCHA.
	var buf bytes.Buffer
	ctype := "image/png"
	if ext == ".png" {
		_, err := dchest.NewImage(id, digits, dchest.StdWidth, dchest.StdHeight).WriteTo(&buf)
		if err != nil {
			p.logger.Error("unlock page: rendering the CAPTCHA image", zap.Error(err))
			p.plain(w, http.StatusInternalServerError, "")
			return
		}
	} else {
		ctype = "audio/wav"
		if _, err := dchest.NewAudio(id, digits, "en").WriteTo(&buf); err != nil {
			p.logger.Error("unlock page: rendering the CAPTCHA audio", zap.Error(err))
			p.plain(w, http.StatusInternalServerError, "")
			return
		}
	}
	h := w.Header()
	setSecurityHeaders(h, cspNothing)
	h.Set("Content-Type", ctype)
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(buf.Bytes())
}

// pageData fills unlock.html.
type pageData struct {
	Nonce       string
	Result      string
	ResultKind  string // "", "error" or "success"
	Wait        string // for 429: how long to wait, in words
	Again       bool   // link back to the form
	ShowForm    bool
	Explain     string
	Action      string
	Builtin     bool
	PuzzleID    string
	ImageURL    string
	AudioURL    string
	ImageWidth  int
	ImageHeight int
	Digits      int
	Widget      *widgetData
}

type widgetData struct {
	Name, ScriptURL, Class, SiteKey string
}

// formPage is the form (with a new builtin puzzle) under an optional
// result.
func (p *UnlockPage) formPage(result, kind string) pageData {
	d := pageData{
		Result:     result,
		ResultKind: kind,
		ShowForm:   true,
		Explain:    MsgExplain,
	}
	if p.widget == nil {
		id := p.puzzles.New()
		d.Builtin = true
		d.PuzzleID = id
		d.ImageURL = p.assetBase + id + ".png"
		d.AudioURL = p.assetBase + id + ".wav"
		d.ImageWidth, d.ImageHeight, d.Digits = dchest.StdWidth, dchest.StdHeight, PuzzleDigits
	}
	return d
}

//go:embed unlock.html
var unlockHTML string

var unlockTemplate = template.Must(template.New("unlock").Parse(unlockHTML))

// render writes the page with its security headers.
func (p *UnlockPage) render(w http.ResponseWriter, status int, d pageData) {
	d.Nonce = newNonce()
	d.Action = p.path
	if p.widget != nil {
		d.Widget = &widgetData{Name: p.widget.name, ScriptURL: p.widget.scriptURL, Class: p.widget.class, SiteKey: p.provider.SiteKey}
	}
	var buf bytes.Buffer
	if err := unlockTemplate.Execute(&buf, d); err != nil {
		p.logger.Error("unlock page: rendering the page", zap.Error(err))
		p.plain(w, http.StatusInternalServerError, "")
		return
	}
	h := w.Header()
	setSecurityHeaders(h, p.csp(d.Nonce))
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// plain writes a short text answer (404, 405, 413, ...); allow, if set,
// becomes the Allow header.
func (p *UnlockPage) plain(w http.ResponseWriter, status int, allow string) {
	h := w.Header()
	setSecurityHeaders(h, cspNothing)
	if allow != "" {
		h.Set("Allow", allow)
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(http.StatusText(status) + "\n"))
}

// cspNothing is the policy of everything that is not the page: images,
// sounds and error texts load and run nothing.
const cspNothing = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

// csp is the page's Content-Security-Policy: nothing by default; its own
// images and sounds (builtin) or exactly the provider's script, frame (and
// for hCaptcha style and connect) origins; the style block by nonce; the
// form posts only to this origin; no framing; no <base>.
func (p *UnlockPage) csp(nonce string) string {
	var b strings.Builder
	b.WriteString("default-src 'none'")
	style := []string{"'nonce-" + nonce + "'"}
	if p.widget == nil {
		b.WriteString("; img-src 'self'; media-src 'self'")
	} else {
		writeDirective(&b, "script-src", p.widget.scriptSrc)
		writeDirective(&b, "frame-src", p.widget.frameSrc)
		writeDirective(&b, "connect-src", p.widget.connectSrc)
		style = append(style, p.widget.styleSrc...)
	}
	writeDirective(&b, "style-src", style)
	b.WriteString("; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	return b.String()
}

func writeDirective(b *strings.Builder, name string, sources []string) {
	if len(sources) == 0 {
		return
	}
	b.WriteString("; ")
	b.WriteString(name)
	for _, s := range sources {
		b.WriteByte(' ')
		b.WriteString(s)
	}
}

func setSecurityHeaders(h http.Header, csp string) {
	h.Set("Content-Security-Policy", csp)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Frame-Options", "DENY")
}

// newNonce returns 128 random bits for the CSP style nonce, in URL-safe
// base64 (valid in a CSP nonce and needs no escaping in HTML).
func newNonce() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("captcha: reading random bytes: " + err.Error())
	}
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// waitText says secs in words: "45 seconds", "1 minute", "7 minutes".
func waitText(secs int) string {
	switch {
	case secs < 60:
		if secs == 1 {
			return "1 second"
		}
		return strconv.Itoa(secs) + " seconds"
	default:
		mins := (secs + 59) / 60
		if mins == 1 {
			return "1 minute"
		}
		return strconv.Itoa(mins) + " minutes"
	}
}

// addrLimiter allows at most limit events per address in a fixed window
// that starts at the address's first event. It keeps at most max
// addresses, forgetting the oldest window first (the windows are in start
// order, so expired ones go first).
type addrLimiter struct {
	limit  int
	window time.Duration
	max    int

	mu     sync.Mutex
	byKey  map[netip.Prefix]*list.Element // of *addrWindow
	starts *list.List                     // oldest window first
}

type addrWindow struct {
	key   netip.Prefix
	start time.Time
	n     int
}

func newAddrLimiter(limit int, window time.Duration, max int) *addrLimiter {
	return &addrLimiter{limit: limit, window: window, max: max, byKey: make(map[netip.Prefix]*list.Element), starts: list.New()}
}

// limiterKey is ip's counting unit: an IPv4 address, or an IPv6 /64.
// Every request without an address shares the zero key.
func limiterKey(ip netip.Addr) netip.Prefix {
	if !ip.IsValid() {
		return netip.Prefix{}
	}
	ip = ip.Unmap()
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	k, _ := ip.Prefix(bits)
	return k
}

// allow counts one event of ip at now; false and the time left in the
// window once the limit is reached.
func (l *addrLimiter) allow(ip netip.Addr, now time.Time) (bool, time.Duration) {
	key := limiterKey(ip)
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.byKey[key]
	if ok && now.Sub(e.Value.(*addrWindow).start) >= l.window {
		l.remove(e)
		ok = false
	}
	if !ok {
		for l.starts.Len() >= l.max {
			l.remove(l.starts.Front())
		}
		e = l.starts.PushBack(&addrWindow{key: key, start: now})
		l.byKey[key] = e
	}
	win := e.Value.(*addrWindow)
	if win.n >= l.limit {
		return false, win.start.Add(l.window).Sub(now)
	}
	win.n++
	return true, 0
}

func (l *addrLimiter) remove(e *list.Element) {
	delete(l.byKey, l.starts.Remove(e).(*addrWindow).key)
}
