package caddyauth

import (
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-apitoken/caddy-apitoken/captcha"
	"github.com/caddy-apitoken/caddy-apitoken/tokenstore"
)

// Realm is what the admin API and the CLI need of a live realm: its store,
// its lockout, and the options that govern new tokens.
type Realm struct {
	Name        string
	Store       tokenstore.Store
	StoreConfig tokenstore.Config
	Lockout     *captcha.Lockout
	TokenPrefix string
	MaxLifetime time.Duration
	// TestEndpointConfigured is false when the config says
	// `test_endpoint off`; the store's setting can only turn it off too.
	TestEndpointConfigured bool
}

// realmEntry holds the Realms that loaded configs provisioned under one
// name, oldest first. The newest is the one in force: Caddy provisions a
// new config before it cleans up the old one. A config that fails to load
// is cleaned up too, and removing its registration leaves the running
// config's in force again.
type realmEntry struct {
	mu   sync.Mutex
	regs []*Realm
}

func (*realmEntry) Destruct() error { return nil }

func (e *realmEntry) current() *Realm {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.regs) == 0 {
		return nil
	}
	return e.regs[len(e.regs)-1]
}

// realms is the registry of live realms. Caddy builds admin modules with
// New() on every config load and cannot configure them; this is how the
// admin module finds the realms.
var realms = caddy.NewUsagePool()

// register makes h's realm findable until Cleanup unregisters it.
func (h *Handler) register() {
	v, _, _ := realms.LoadOrNew(h.Realm, func() (caddy.Destructor, error) { return new(realmEntry), nil })
	h.registration = &Realm{
		Name:                   h.Realm,
		Store:                  h.store,
		StoreConfig:            h.storeConfig,
		Lockout:                h.lockout,
		TokenPrefix:            h.TokenPrefix,
		MaxLifetime:            time.Duration(h.MaxLifetime),
		TestEndpointConfigured: h.testEnabled,
	}
	e := v.(*realmEntry)
	e.mu.Lock()
	e.regs = append(e.regs, h.registration)
	e.mu.Unlock()
}

func (h *Handler) unregister() error {
	if v, ok := lookupEntry(h.Realm); ok {
		v.mu.Lock()
		v.regs = slices.DeleteFunc(v.regs, func(r *Realm) bool { return r == h.registration })
		v.mu.Unlock()
	}
	_, err := realms.Delete(h.Realm)
	return err
}

func lookupEntry(name string) (*realmEntry, bool) {
	var found *realmEntry
	realms.Range(func(key, value any) bool {
		if key == name {
			found = value.(*realmEntry)
			return false
		}
		return true
	})
	return found, found != nil
}

// LookupRealm returns the live realm called name.
func LookupRealm(name string) (*Realm, bool) {
	e, ok := lookupEntry(name)
	if !ok {
		return nil, false
	}
	r := e.current()
	return r, r != nil
}

// Realms returns every live realm, by name.
func Realms() []*Realm {
	var out []*Realm
	realms.Range(func(_, value any) bool {
		if r := value.(*realmEntry).current(); r != nil {
			out = append(out, r)
		}
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
