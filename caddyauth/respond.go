package caddyauth

import (
	"encoding/json"
	"math"
	"net/http"
	"slices"
	"strconv"
)

// The Atlassian headers, spelt as Jira spells them. Go would canonicalise
// them to X-Seraph-Loginreason and X-Ausername; HTTP says case does not
// matter, but some scripts compare the names literally, so they are set
// in the header map as they are.
const (
	headerSeraphLoginReason     = "X-Seraph-LoginReason"
	headerAUsername             = "X-AUSERNAME"
	headerAuthenticationDenied  = "X-Authentication-Denied-Reason"
	headerAPITokenExpires       = "X-Api-Token-Expires"
	contentTypeJSON             = "application/json"
	testEndpointDisabledMessage = "The test endpoint has been disabled by an administrator"
)

// setExactHeader sets a header under exactly the name given.
func setExactHeader(hdr http.Header, name, value string) {
	hdr[name] = []string{value}
}

// failureHeaders sets the headers that go with a failed verdict on both
// protected routes and the test endpoint.
func (h *Handler) failureHeaders(hdr http.Header, r *http.Request, v verdict) {
	if !h.atlassian {
		return
	}
	if reason := v.outcome.info().seraph; reason != "" {
		setExactHeader(hdr, headerSeraphLoginReason, reason)
	}
	if v.outcome == captchaRequired {
		setExactHeader(hdr, headerAuthenticationDenied, "CAPTCHA_CHALLENGE; login-url="+h.unlockURL(r))
	}
}

// unlockURL is the absolute URL of the unlock page, with the scheme and
// host the client used.
func (h *Handler) unlockURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host + h.unlockPath
}

// writeFailure answers a failed request on a protected route:
// {"message": "<detail>"} with the outcome's status, and on a 401 a
// challenge for each scheme we accept.
func (h *Handler) writeFailure(w http.ResponseWriter, r *http.Request, v verdict) {
	hdr := w.Header()
	h.failureHeaders(hdr, r, v)
	status := v.outcome.info().status
	switch status {
	case http.StatusUnauthorized:
		// A copy: a later handler may rewrite header values in place.
		hdr["Www-Authenticate"] = slices.Clone(h.wwwAuthenticate)
	case http.StatusTooManyRequests:
		hdr.Set("Retry-After", strconv.Itoa(int(math.Ceil(v.retryAfter.Seconds()))))
	}
	body := h.failureBodies[v.outcome]
	if v.detailArg != "" {
		body = messageBody(v.detail())
	}
	writeBody(w, status, body)
}

// messageBody is a failure's body on a protected route:
// {"message": "<detail>"}.
func messageBody(detail string) []byte {
	data, _ := json.Marshal(struct {
		Message string `json:"message"`
	}{detail}) // a struct of one string always encodes
	return data
}

// testEndpointAnswer is the test endpoint's body; exactly one form is used.
type testEndpointAnswer struct {
	Success     *bool  `json:"isSuccessfulAuthentication,omitempty"`
	FailureText string `json:"authenticationFailureDetails,omitempty"`
	Unavailable string `json:"testEndpointUnavailable,omitempty"`
}

// serveTestEndpoint runs the checks for any method and always answers 200
// with the verdict as JSON. It never passes the request on, creates no
// session, and expires the configured session cookies.
func (h *Handler) serveTestEndpoint(w http.ResponseWriter, r *http.Request) error {
	hdr := w.Header()
	hdr.Set("Cache-Control", "no-store")
	for _, name := range h.SessionCookies {
		hdr.Add("Set-Cookie", name+"=; Path=/; Max-Age=0")
	}

	enabled := h.testEnabled
	if enabled {
		settings, err := h.store.Settings(r.Context())
		// A store that cannot say whether the endpoint is enabled cannot
		// answer the checks either: say so through them.
		enabled = err != nil || settings.TestEndpointOn()
	}
	if !enabled {
		writeJSON(w, http.StatusOK, testEndpointAnswer{Unavailable: testEndpointDisabledMessage})
		return nil
	}

	ip := clientIP(r)
	v := h.authenticate(r, ip)
	ok := v.outcome == authenticated
	answer := testEndpointAnswer{Success: &ok}
	if ok {
		h.noteSuccess(w, r, v, ip)
	} else {
		h.noteFailure(r, v, ip)
		h.failureHeaders(hdr, r, v)
		answer.FailureText = v.detail()
	}
	writeJSON(w, http.StatusOK, answer)
	return nil
}

// writeJSON answers with body encoded as JSON.
func writeJSON(w http.ResponseWriter, status int, body any) {
	data, err := json.Marshal(body)
	if err != nil {
		// Only our own fixed types are encoded here; this cannot happen.
		http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
		return
	}
	writeBody(w, status, data)
}

// writeBody answers with data, a JSON document.
func writeBody(w http.ResponseWriter, status int, data []byte) {
	w.Header().Set("Content-Type", contentTypeJSON)
	w.WriteHeader(status)
	_, _ = w.Write(data)
}
