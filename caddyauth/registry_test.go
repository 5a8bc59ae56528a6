package caddyauth

import (
	"testing"
	"time"

	"github.com/caddy-apitoken/caddy-apitoken/captcha"
)

// A config that fails to load is cleaned up after provisioning: its
// registrations must leave the running config's realm in force, for the
// admin API (store) and for the lockout (settings).
func TestRefusedConfigLeavesTheRunningRealm(t *testing.T) {
	now := time.Now()
	running := provision(t, newFixture(t, now), now, func(h *Handler) { h.Realm = "reg" })
	five := 5
	running.Lockout = nil

	refused := provision(t, newFixture(t, now), now, func(h *Handler) {
		h.Realm = "reg"
		h.Lockout = &captcha.Config{MaxFailures: &five, Key: captcha.KeyUser}
	})
	if r, _ := LookupRealm("reg"); r.Store != refused.store {
		t.Fatal("the newest config's realm is not in force")
	}
	if err := refused.Cleanup(); err != nil {
		t.Fatal(err)
	}
	refused.registered, refused.realmHeld, refused.store = false, false, nil // cleaned up once

	r, ok := LookupRealm("reg")
	if !ok || r.Store != running.store {
		t.Fatalf("after the refused config's clean-up, the realm serves %v, want the running config's store", r)
	}
	if got := running.lockout.Settings().Key; got != captcha.KeyUserIP {
		t.Errorf("lockout key = %q after the refused config's clean-up, want the running config's %q", got, captcha.KeyUserIP)
	}
}
