package captcha

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// DefaultVerifyTimeout bounds a call to a provider's siteverify API.
const DefaultVerifyTimeout = 10 * time.Second

// widget describes a third-party CAPTCHA: what the page embeds, which form
// field carries its response, where the response is verified and which
// origins the page's Content-Security-Policy must allow. Sources:
//
//   - Turnstile: developers.cloudflare.com/turnstile (get-started/server-side-validation,
//     reference/content-security-policy): script-src and frame-src
//     https://challenges.cloudflare.com.
//   - hCaptcha: docs.hcaptcha.com ("Content-Security-Policy Settings"):
//     script-src, frame-src, style-src and connect-src https://hcaptcha.com
//     https://*.hcaptcha.com, without naming asset subdomains.
//   - reCAPTCHA v2: developers.google.com/recaptcha/docs/verify and the
//     reCAPTCHA FAQ on CSP: script-src https://www.google.com/recaptcha/
//     https://www.gstatic.com/recaptcha/, frame-src
//     https://www.google.com/recaptcha/ https://recaptcha.google.com/recaptcha/.
type widget struct {
	name       string
	scriptURL  string   // the provider's api.js
	class      string   // class of the element the script turns into the widget
	field      string   // form field the widget fills with its response
	verifyURL  string   // default siteverify endpoint
	scriptSrc  []string // CSP script-src
	frameSrc   []string // CSP frame-src
	styleSrc   []string // CSP style-src, besides the page's nonce
	connectSrc []string // CSP connect-src
}

var widgets = map[string]widget{
	ProviderTurnstile: {
		name:      "Cloudflare Turnstile",
		scriptURL: "https://challenges.cloudflare.com/turnstile/v0/api.js",
		class:     "cf-turnstile",
		field:     "cf-turnstile-response",
		verifyURL: "https://challenges.cloudflare.com/turnstile/v0/siteverify",
		scriptSrc: []string{"https://challenges.cloudflare.com"},
		frameSrc:  []string{"https://challenges.cloudflare.com"},
	},
	ProviderHCaptcha: {
		name:       "hCaptcha",
		scriptURL:  "https://js.hcaptcha.com/1/api.js",
		class:      "h-captcha",
		field:      "h-captcha-response",
		verifyURL:  "https://api.hcaptcha.com/siteverify",
		scriptSrc:  []string{"https://hcaptcha.com", "https://*.hcaptcha.com"},
		frameSrc:   []string{"https://hcaptcha.com", "https://*.hcaptcha.com"},
		styleSrc:   []string{"https://hcaptcha.com", "https://*.hcaptcha.com"},
		connectSrc: []string{"https://hcaptcha.com", "https://*.hcaptcha.com"},
	},
	ProviderReCaptcha: {
		name:      "reCAPTCHA",
		scriptURL: "https://www.google.com/recaptcha/api.js",
		class:     "g-recaptcha",
		field:     "g-recaptcha-response",
		verifyURL: "https://www.google.com/recaptcha/api/siteverify",
		scriptSrc: []string{"https://www.google.com/recaptcha/", "https://www.gstatic.com/recaptcha/"},
		frameSrc:  []string{"https://www.google.com/recaptcha/", "https://recaptcha.google.com/recaptcha/"},
	},
}

// maxVerifyBody bounds what is read of a siteverify answer (a small JSON
// object).
const maxVerifyBody = 64 << 10

// siteVerifyAnswer is the part of the siteverify JSON answer we use; all
// three providers share it.
type siteVerifyAnswer struct {
	Success    *bool    `json:"success"`
	ErrorCodes []string `json:"error-codes"`
}

// siteVerify asks a provider whether response (the widget's token) is
// valid: POST application/x-www-form-urlencoded secret, response and
// remoteip to verifyURL, within timeout. It returns (false, nil) for an
// answer the provider rejects, and an error when it could not get a
// trustworthy answer: network error, timeout, a status other than 200, a
// body that is not the expected JSON, or error codes saying the secret is
// wrong (a configuration error, not a wrong answer). Errors never contain
// the secret or the response.
func siteVerify(ctx context.Context, client *http.Client, verifyURL, secret, response, remoteIP string, timeout time.Duration) (bool, error) {
	if response == "" {
		// The widget was not solved (or JavaScript is off): nothing to
		// ask, and providers answer "missing-input-response" anyway.
		return false, nil
	}
	if timeout <= 0 {
		timeout = DefaultVerifyTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	form := url.Values{"secret": {secret}, "response": {response}}
	if remoteIP != "" {
		form.Set("remoteip", remoteIP)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, verifyURL, strings.NewReader(form.Encode()))
	if err != nil {
		return false, fmt.Errorf("siteverify %s: building request: %v", redactURL(verifyURL), err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")

	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return false, fmt.Errorf("siteverify %s: no answer within %s", redactURL(verifyURL), timeout)
		}
		var uerr *url.Error
		if errors.As(err, &uerr) {
			// url.Error repeats the URL; say it once, redacted.
			err = uerr.Err
		}
		return false, fmt.Errorf("siteverify %s: %v", redactURL(verifyURL), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxVerifyBody))
		return false, fmt.Errorf("siteverify %s: status %d, want 200", redactURL(verifyURL), resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxVerifyBody))
	if err != nil {
		return false, fmt.Errorf("siteverify %s: reading answer: %v", redactURL(verifyURL), err)
	}
	var ans siteVerifyAnswer
	if err := json.Unmarshal(body, &ans); err != nil {
		return false, fmt.Errorf("siteverify %s: answer is not the expected JSON: %v", redactURL(verifyURL), err)
	}
	if ans.Success == nil {
		return false, fmt.Errorf("siteverify %s: answer has no \"success\" field", redactURL(verifyURL))
	}
	if *ans.Success {
		return true, nil
	}
	for _, code := range ans.ErrorCodes {
		switch code {
		case "missing-input-secret", "invalid-input-secret", "sitekey-secret-mismatch":
			return false, fmt.Errorf("siteverify %s: the provider rejects the configured secret (%s)", redactURL(verifyURL), code)
		case "internal-error":
			return false, fmt.Errorf("siteverify %s: the provider reports an internal error", redactURL(verifyURL))
		}
	}
	return false, nil
}

// redactURL shows a verify URL without user info, query or fragment.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable verify_url)"
	}
	u.User = nil
	u.RawQuery = ""
	u.Fragment = ""
	return u.String()
}

// newVerifyClient returns the HTTP client for siteverify calls. It does
// not follow redirects: a 307/308 would re-send the secret to wherever the
// redirect points, so a redirect is an error (a status other than 200).
func newVerifyClient() *http.Client {
	return &http.Client{
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}
