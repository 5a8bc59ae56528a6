package caddyauth

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-apitoken/caddy-apitoken/captcha"
	"github.com/caddy-apitoken/caddy-apitoken/tokenstore"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("api_token_auth", parseCaddyfile)
	// Token authentication replaces basic_auth where both could apply, so
	// it runs first.
	httpcaddyfile.RegisterDirectiveOrder("api_token_auth", httpcaddyfile.Before, "basic_auth")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	handler := new(Handler)
	err := handler.UnmarshalCaddyfile(h.Dispenser)
	return handler, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	api_token_auth [<matcher>] {
//	    realm             <name>
//	    store             file <path> | sqlite <path> | postgres <dsn>
//	    test_endpoint     <path> | off
//	    allow_groups      <group...>
//	    allow_ips         <cidr...>
//	    anonymous         deny | allow
//	    keep_authorization
//	    session_cookies   <name...>
//	    atlassian_headers on | off
//	    token_prefix      <prefix>
//	    max_lifetime      <duration>
//	    cache_ttl         <duration>
//	    lockout {
//	        max_failures    <n>
//	        key             user_ip | user
//	        reset_after     <duration>
//	        ip_max_failures <n>
//	        ip_ban          <duration>
//	        unlock_path     <path>
//	        captcha         builtin | turnstile|hcaptcha|recaptcha <site_key> <secret> [verify_url <url>]
//	        ipv6_prefix     <bits>
//	    }
//	}
//
// Durations take Caddy's forms plus d for days (90d). Values are checked
// here, so that `caddy adapt` and `caddy validate` name the subdirective
// and the value that is wrong.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		sub := d.Val()
		switch sub {
		case "realm":
			if !d.Args(&h.Realm) || d.NextArg() {
				return d.ArgErr()
			}
			if err := checkRealm(h.Realm); err != nil {
				return d.Err(err.Error())
			}

		case "store":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.Errf("store: want 'store file <path>', 'store sqlite <path>' or 'store postgres <dsn>'")
			}
			h.Store = tokenstore.Config{Type: args[0], Path: args[1]}
			if args[0] == tokenstore.TypePostgres {
				h.Store = tokenstore.Config{Type: args[0], DSN: args[1]}
			}
			if err := h.Store.Validate(); err != nil {
				return d.Errf("%v", err)
			}

		case "test_endpoint":
			if !d.Args(&h.TestEndpoint) || d.NextArg() {
				return d.ArgErr()
			}
			if err := checkTestEndpoint(h.TestEndpoint); err != nil {
				return d.Err(err.Error())
			}

		case "allow_groups":
			groups := d.RemainingArgs()
			if len(groups) == 0 {
				return d.ArgErr()
			}
			if err := checkAllowGroups(groups); err != nil {
				return d.Err(err.Error())
			}
			h.AllowGroups = append(h.AllowGroups, groups...)

		case "allow_ips":
			ranges := d.RemainingArgs()
			if len(ranges) == 0 {
				return d.ArgErr()
			}
			if _, err := tokenstore.ParsePrefixes(ranges); err != nil {
				return d.Errf("allow_ips: %v", err)
			}
			h.AllowIPs = append(h.AllowIPs, ranges...)

		case "anonymous":
			if !d.Args(&h.Anonymous) || d.NextArg() {
				return d.ArgErr()
			}
			if err := checkAnonymous(h.Anonymous); err != nil {
				return d.Err(err.Error())
			}

		case "keep_authorization":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.KeepAuthorization = true

		case "session_cookies":
			names := d.RemainingArgs()
			if len(names) == 0 {
				return d.ArgErr()
			}
			if err := checkSessionCookies(names); err != nil {
				return d.Err(err.Error())
			}
			h.SessionCookies = append(h.SessionCookies, names...)

		case "atlassian_headers":
			var onOff string
			if !d.Args(&onOff) || d.NextArg() {
				return d.ArgErr()
			}
			switch onOff {
			case "on":
				h.AtlassianHeaders = nil // the default
			case "off":
				off := false
				h.AtlassianHeaders = &off
			default:
				return d.Errf("atlassian_headers %q: must be 'on' or 'off'", onOff)
			}

		case "token_prefix":
			if !d.Args(&h.TokenPrefix) || d.NextArg() {
				return d.ArgErr()
			}
			if err := checkTokenPrefix(h.TokenPrefix); err != nil {
				return d.Err(err.Error())
			}

		case "max_lifetime", "cache_ttl":
			dur, err := parseDurationArg(d, sub)
			if err != nil {
				return err
			}
			if sub == "max_lifetime" {
				h.MaxLifetime = dur
			} else {
				h.CacheTTL = dur
			}

		case "lockout":
			h.Lockout = new(captcha.Config)
			if err := h.Lockout.UnmarshalCaddyfile(d); err != nil {
				return err
			}

		default:
			return d.Errf("unrecognized api_token_auth option %q", sub)
		}
	}
	if h.Store.Type == "" {
		return d.Err("api_token_auth: store is required, e.g. 'store file /etc/caddy/tokens.json'")
	}
	return nil
}

// parseDurationArg reads the one duration argument of subdirective sub.
func parseDurationArg(d *caddyfile.Dispenser, sub string) (caddy.Duration, error) {
	var s string
	if !d.Args(&s) || d.NextArg() {
		return 0, d.ArgErr()
	}
	dur, err := caddy.ParseDuration(s)
	if err != nil {
		return 0, d.Errf("%s %q: not a duration (e.g. 30s, 12h, 90d)", sub, s)
	}
	if dur < 0 {
		return 0, d.Errf("%s %q: must not be negative", sub, s)
	}
	return caddy.Duration(dur), nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
