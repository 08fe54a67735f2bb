// Command remote-gateway is a path gateway with no storage of its own: it
// answers /ipfs/{cid}/path with files, directory listings and everything
// else a browser expects, and takes every block it needs from remote
// trustless gateways, as rainbow (the gateway behind ipfs.io) does with
// RAINBOW_REMOTE_BACKENDS. It is built from boxo's gateway package, the same
// code rainbow runs, in its two modes:
//
//	block: one GET /ipfs/{cid}?format=raw per block (Accept: application/vnd.ipld.raw)
//	car:   GET /ipfs/{cid}/path?format=car&dag-scope=...&entity-bytes=... per request
//
// The integration tests run it against garage-ipfs's gateway: rainbow
// itself is not on the Go module proxy this project builds from, so this is
// its stand-in (docs/CONFORMANCE.md). Every request it sends to a backend is
// logged on stderr as one line, "backend GET <path and query> <status>"
// (<status> is "error(...)" when no answer came), so
// a test can check which mode was used and that nothing came from anywhere
// else.
//
//	remote-gateway -backend http://127.0.0.1:8080 -mode car -listen 127.0.0.1:0
//
// It prints "listening on http://ADDR" on stdout once it accepts connections.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/ipfs/boxo/gateway"
)

// logged is an http.RoundTripper that logs every backend request and its status.
type logged struct{ next http.RoundTripper }

func (l logged) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := l.next.RoundTrip(req)
	var status string
	if err == nil {
		status = fmt.Sprint(resp.StatusCode)
	} else {
		status = fmt.Sprintf("error(%v)", err)
	}
	log.Printf("backend %s %s %s", req.Method, req.URL.RequestURI(), status)
	return resp, err
}

func main() {
	log.SetFlags(0)
	backends := flag.String("backend", "", "comma-separated trustless gateway URLs to take blocks from (required)")
	mode := flag.String("mode", "block", "how to ask the backends: block (one raw block per request) or car (one CAR per request)")
	listen := flag.String("listen", "127.0.0.1:8090", "address to serve the path gateway on (port 0: any free port)")
	flag.Parse()
	if *backends == "" {
		fmt.Fprintln(os.Stderr, "remote-gateway: -backend is required")
		flag.Usage()
		os.Exit(2)
	}
	urls := strings.Split(*backends, ",")
	client := &http.Client{Timeout: 60 * time.Second, Transport: logged{http.DefaultTransport}}

	var backend gateway.IPFSBackend
	var err error
	switch *mode {
	case "block":
		backend, err = gateway.NewRemoteBlocksBackend(urls, client)
	case "car":
		backend, err = gateway.NewRemoteCarBackend(urls, client)
	default:
		err = fmt.Errorf("unknown -mode %q: block or car", *mode)
	}
	if err != nil {
		log.Fatalf("remote-gateway: %v", err)
	}

	handler := gateway.NewHandler(gateway.Config{DeserializedResponses: true, NoDNSLink: true}, backend)
	mux := http.NewServeMux()
	mux.Handle("/ipfs/", handler)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("remote-gateway: %v", err)
	}
	fmt.Printf("listening on http://%s\n", ln.Addr())
	log.Fatal(http.Serve(ln, mux))
}
