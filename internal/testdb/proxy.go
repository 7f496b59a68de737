package testdb

import (
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pushblaster/pushblaster/postgres"
)

// Proxy is a TCP proxy in front of the test PostgreSQL server. Cut makes
// the database go away for whoever connects through it, as a stopped
// server does: open connections are reset and new ones refused. Restore
// brings it back on the same address. Other tests, which share the server,
// are not disturbed.
type Proxy struct {
	tb     testing.TB
	addr   string // host:port the proxy listens on
	target string // host:port of PostgreSQL

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// NewProxy starts a proxy to the server of URL().
func NewProxy(tb testing.TB) *Proxy {
	tb.Helper()
	u, err := url.Parse(URL())
	if err != nil {
		tb.Fatalf("test database URL: %v", err)
	}
	p := &Proxy{tb: tb, target: u.Host, conns: map[net.Conn]struct{}{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p.addr = ln.Addr().String()
	p.serve(ln)
	tb.Cleanup(func() { p.Cut(); p.wg.Wait() })
	return p
}

// URL is the test database's URL through the proxy.
func (p *Proxy) URL() string {
	u, _ := url.Parse(URL()) // parsed in NewProxy
	u.Host = p.addr
	return u.String()
}

// Open opens a pool on schema through the proxy, with short timeouts so
// that an outage shows quickly.
func (p *Proxy) Open(tb testing.TB, schema string) *pgxpool.Pool {
	tb.Helper()
	return OpenPool(tb, postgres.Config{URL: p.URL(), Schema: schema, ConnectTimeout: time.Second})
}

func (p *Proxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() { defer p.wg.Done(); p.pipe(c) }()
		}
	}()
}

func (p *Proxy) pipe(c net.Conn) {
	s, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	if p.ln == nil { // cut meanwhile
		p.mu.Unlock()
		c.Close()
		s.Close()
		return
	}
	p.conns[c], p.conns[s] = struct{}{}, struct{}{}
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go cp(s, c)
	go cp(c, s)
	<-done
	c.Close()
	s.Close()
	<-done
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, s)
	p.mu.Unlock()
}

// Cut stops the proxy: every open connection is reset, new ones are
// refused.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // a reset, as a killed server's
		}
		c.Close()
	}
}

// Restore listens again on the same address.
func (p *Proxy) Restore() {
	p.tb.Helper()
	var (
		ln  net.Listener
		err error
	)
	for range 100 { // the port may take a moment to be free again
		if ln, err = net.Listen("tcp", p.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		p.tb.Fatalf("proxy: listen again on %s: %v", p.addr, err)
	}
	p.serve(ln)
}
