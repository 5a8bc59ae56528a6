// Package captcha counts failed authentication attempts, puts users under
// a CAPTCHA challenge and bans client IPs when they fail too often, and
// serves the self-service unlock page that clears a challenge.
package captcha

import (
	"fmt"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-apitoken/caddy-apitoken/internal/clientnet"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// Defaults of the lockout options (SPEC §7).
const (
	DefaultMaxFailures   = 5
	DefaultResetAfter    = 15 * time.Minute
	DefaultIPMaxFailures = 20
	DefaultIPBan         = 5 * time.Minute
	DefaultUnlockPath    = "/api-token-auth/unlock"
)

// Key kinds: what consecutive failures are counted per.
const (
	// KeyUserIP counts per user and client IP, so that an attacker who
	// knows a username cannot lock its owner out from the owner's address.
	KeyUserIP = "user_ip"
	// KeyUser counts per user, whatever the address (Atlassian's way).
	KeyUser = "user"
)

// CAPTCHA providers.
const (
	ProviderBuiltin   = "builtin"
	ProviderTurnstile = "turnstile"
	ProviderHCaptcha  = "hcaptcha"
	ProviderReCaptcha = "recaptcha"
)

// Config is the `lockout` block of api_token_auth.
type Config struct {
	// Consecutive failed attempts (an invalid token with Basic
	// authentication) before the user must solve a CAPTCHA. 0 disables
	// challenges. Default: 5.
	MaxFailures *int `json:"max_failures,omitempty"`

	// What failures are counted per: "user_ip" (the user at one client
	// IP; an attacker elsewhere cannot lock the user out) or "user".
	// Default: "user_ip".
	Key string `json:"key,omitempty"`

	// A challenge, and a failure count, expire this long after they
	// started or last grew. 0 means never. Default: 15m.
	ResetAfter *caddy.Duration `json:"reset_after,omitempty"`

	// Failed attempts from one client IP, whatever the user or scheme,
	// before the IP is banned. 0 disables bans. Default: 20.
	IPMaxFailures *int `json:"ip_max_failures,omitempty"`

	// How long a ban lasts. Default: 5m.
	IPBan caddy.Duration `json:"ip_ban,omitempty"`

	// Path of the self-service unlock page. Default:
	// "/api-token-auth/unlock".
	UnlockPath string `json:"unlock_path,omitempty"`

	// The CAPTCHA the unlock page asks. Default: builtin.
	Captcha *Provider `json:"captcha,omitempty"`

	// How many leading bits of an IPv6 client address make one client,
	// from 48 to 128. Every per-client decision (failure counts, bans,
	// challenges, the unlock page's limits) keys on this network, because
	// one household or VM is handed a whole /64 and could otherwise pick
	// a fresh address for every attempt. An IPv4 address is always its
	// own client. Default: 64.
	IPv6Prefix int `json:"ipv6_prefix,omitempty"`
}

// Provider says which CAPTCHA the unlock page shows.
type Provider struct {
	// "builtin" (an image with an audio alternative, no JavaScript and no
	// third party), "turnstile", "hcaptcha" or "recaptcha".
	Name string `json:"provider"`
	// The provider's site key, shown in the page (not for builtin).
	SiteKey string `json:"site_key,omitempty"`
	// The provider's secret, used to verify answers (not for builtin).
	// Placeholders such as {env.CAPTCHA_SECRET} are expanded.
	Secret string `json:"secret,omitempty"`
	// The provider's siteverify URL. Default: the provider's own.
	VerifyURL string `json:"verify_url,omitempty"`
}

// Settings is a Config with its defaults applied, ready for use.
type Settings struct {
	MaxFailures   int
	Key           string
	ResetAfter    time.Duration
	IPMaxFailures int
	IPBan         time.Duration
	UnlockPath    string
	Captcha       Provider
	IPv6Prefix    int
}

// Settings applies the defaults.
func (c *Config) Settings() Settings {
	s := Settings{
		MaxFailures:   DefaultMaxFailures,
		Key:           KeyUserIP,
		ResetAfter:    DefaultResetAfter,
		IPMaxFailures: DefaultIPMaxFailures,
		IPBan:         DefaultIPBan,
		UnlockPath:    DefaultUnlockPath,
		Captcha:       Provider{Name: ProviderBuiltin},
		IPv6Prefix:    clientnet.DefaultIPv6Prefix,
	}
	if c == nil {
		return s
	}
	if c.MaxFailures != nil {
		s.MaxFailures = *c.MaxFailures
	}
	if c.Key != "" {
		s.Key = c.Key
	}
	if c.ResetAfter != nil {
		s.ResetAfter = time.Duration(*c.ResetAfter)
	}
	if c.IPMaxFailures != nil {
		s.IPMaxFailures = *c.IPMaxFailures
	}
	if c.IPBan != 0 {
		s.IPBan = time.Duration(c.IPBan)
	}
	if c.UnlockPath != "" {
		s.UnlockPath = c.UnlockPath
	}
	if c.Captcha != nil {
		s.Captcha = *c.Captcha
	}
	if c.IPv6Prefix != 0 {
		s.IPv6Prefix = c.IPv6Prefix
	}
	return s
}

// Network returns the network of ip that every per-client decision keys
// on (see package clientnet).
func (s *Settings) Network(ip netip.Addr) netip.Prefix {
	return clientnet.Of(ip, s.IPv6Prefix)
}

// Validate checks the block; messages name the option and the value.
func (c *Config) Validate() error {
	if c == nil {
		return nil
	}
	if c.MaxFailures != nil && *c.MaxFailures < 0 {
		return fmt.Errorf("lockout: max_failures %d: must not be negative", *c.MaxFailures)
	}
	switch c.Key {
	case "", KeyUserIP, KeyUser:
	default:
		return fmt.Errorf("lockout: key %q: must be 'user_ip' or 'user'", c.Key)
	}
	if c.ResetAfter != nil && *c.ResetAfter < 0 {
		return fmt.Errorf("lockout: reset_after %s: must not be negative", time.Duration(*c.ResetAfter))
	}
	if c.IPMaxFailures != nil && *c.IPMaxFailures < 0 {
		return fmt.Errorf("lockout: ip_max_failures %d: must not be negative", *c.IPMaxFailures)
	}
	if c.IPBan < 0 {
		return fmt.Errorf("lockout: ip_ban %s: must not be negative", time.Duration(c.IPBan))
	}
	if c.UnlockPath != "" && !strings.HasPrefix(c.UnlockPath, "/") {
		return fmt.Errorf("lockout: unlock_path %q: must start with /", c.UnlockPath)
	}
	if c.IPv6Prefix != 0 {
		if err := clientnet.CheckIPv6Prefix(c.IPv6Prefix); err != nil {
			return fmt.Errorf("lockout: %v", err)
		}
	}
	if c.Captcha != nil {
		if err := c.Captcha.validate(); err != nil {
			return fmt.Errorf("lockout: captcha: %v", err)
		}
	}
	return nil
}

func (p *Provider) validate() error {
	switch p.Name {
	case ProviderBuiltin:
		if p.SiteKey != "" || p.Secret != "" || p.VerifyURL != "" {
			return fmt.Errorf("builtin takes no site key, secret or verify_url")
		}
		return nil
	case ProviderTurnstile, ProviderHCaptcha, ProviderReCaptcha:
	default:
		return fmt.Errorf("unknown provider %q (want builtin, turnstile, hcaptcha or recaptcha)", p.Name)
	}
	if p.SiteKey == "" || p.Secret == "" {
		return fmt.Errorf("%s needs a site key and a secret", p.Name)
	}
	if p.VerifyURL != "" {
		u, err := url.Parse(p.VerifyURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return fmt.Errorf("verify_url %q: not an http(s) URL", p.VerifyURL)
		}
	}
	return nil
}

// UnmarshalCaddyfile reads the `lockout` block; the dispenser is on the
// word "lockout". Syntax:
//
//	lockout {
//	    max_failures    <n>
//	    key             user_ip | user
//	    reset_after     <duration>
//	    ip_max_failures <n>
//	    ip_ban          <duration>
//	    unlock_path     <path>
//	    captcha         builtin | turnstile|hcaptcha|recaptcha <site_key> <secret> [verify_url <url>]
//	    ipv6_prefix     <bits>
//	}
func (c *Config) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		switch sub {
		case "max_failures", "ip_max_failures":
			n, err := intArg(d, sub)
			if err != nil {
				return err
			}
			if sub == "max_failures" {
				c.MaxFailures = &n
			} else {
				c.IPMaxFailures = &n
			}
		case "ipv6_prefix":
			n, err := intArg(d, sub)
			if err != nil {
				return err
			}
			if err := clientnet.CheckIPv6Prefix(n); err != nil {
				return d.Errf("lockout: %v", err)
			}
			c.IPv6Prefix = n
		case "key":
			if !d.Args(&c.Key) || d.NextArg() {
				return d.ArgErr()
			}
		case "reset_after", "ip_ban":
			dur, err := durationArg(d, sub)
			if err != nil {
				return err
			}
			if sub == "reset_after" {
				c.ResetAfter = &dur
			} else {
				if dur == 0 {
					return d.Errf("lockout: ip_ban %q: must be positive (use ip_max_failures 0 to disable bans)", d.Val())
				}
				c.IPBan = dur
			}
		case "unlock_path":
			if !d.Args(&c.UnlockPath) || d.NextArg() {
				return d.ArgErr()
			}
		case "captcha":
			args := d.RemainingArgs()
			p := &Provider{}
			switch {
			case len(args) == 1:
				p.Name = args[0]
			case len(args) == 3:
				p.Name, p.SiteKey, p.Secret = args[0], args[1], args[2]
			case len(args) == 5 && args[3] == "verify_url":
				p.Name, p.SiteKey, p.Secret, p.VerifyURL = args[0], args[1], args[2], args[4]
			default:
				return d.Errf("lockout: captcha: want 'builtin' or '<provider> <site_key> <secret> [verify_url <url>]'")
			}
			c.Captcha = p
		default:
			return d.Errf("unrecognized lockout option %q", sub)
		}
		if err := c.Validate(); err != nil {
			return d.Errf("%v", err)
		}
	}
	return nil
}

func intArg(d *caddyfile.Dispenser, sub string) (int, error) {
	var s string
	if !d.Args(&s) || d.NextArg() {
		return 0, d.ArgErr()
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, d.Errf("lockout: %s %q: must be a whole number, 0 or more", sub, s)
	}
	return n, nil
}

func durationArg(d *caddyfile.Dispenser, sub string) (caddy.Duration, error) {
	var s string
	if !d.Args(&s) || d.NextArg() {
		return 0, d.ArgErr()
	}
	dur, err := caddy.ParseDuration(s)
	if err != nil || dur < 0 {
		return 0, d.Errf("lockout: %s %q: not a duration of 0 or more (e.g. 15m, 1h, 1d)", sub, s)
	}
	return caddy.Duration(dur), nil
}
