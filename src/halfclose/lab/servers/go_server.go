// The lab's Go server: net/http with IdleTimeout, the image at every path. Standard library only.
// Prints "ready" on stderr once it listens on every address.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var listen listFlag
	flag.Var(&listen, "listen", "address to listen on (repeat)")
	port := flag.Int("port", 80, "port")
	idle := flag.Duration("idle-timeout", 2*time.Second, "http.Server.IdleTimeout")
	image := flag.String("image", "", "the image file")
	cert := flag.String("tls-cert", "", "certificate chain (PEM)")
	key := flag.String("tls-key", "", "private key (PEM)")
	version := flag.String("tls-version", "1.3", "the one TLS version accepted")
	h2 := flag.Bool("http2", false, "offer HTTP/2 (over TLS)")
	flag.Parse()

	body, err := os.ReadFile(*image)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cannot read the image: %v\n", err)
		os.Exit(2)
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "image/png")
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusOK)
		w.Write(body)
	})
	var servers []*http.Server
	for _, addr := range listen {
		srv := &http.Server{Handler: handler, IdleTimeout: *idle, ReadHeaderTimeout: time.Minute}
		if *cert != "" {
			v := uint16(tls.VersionTLS13)
			if *version == "1.2" {
				v = tls.VersionTLS12
			}
			srv.TLSConfig = &tls.Config{MinVersion: v, MaxVersion: v}
			if !*h2 {
				// A non-nil empty map switches net/http's automatic HTTP/2 off.
				srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
			}
		}
		ln, err := net.Listen("tcp", net.JoinHostPort(addr, strconv.Itoa(*port)))
		if err != nil {
			fmt.Fprintf(os.Stderr, "cannot listen: %v\n", err)
			os.Exit(2)
		}
		servers = append(servers, srv)
		go func(srv *http.Server, ln net.Listener) {
			var err error
			if *cert != "" {
				err = srv.ServeTLS(ln, *cert, *key)
			} else {
				err = srv.Serve(ln)
			}
			if err != nil && err != http.ErrServerClosed {
				fmt.Fprintf(os.Stderr, "serve: %v\n", err)
				os.Exit(2)
			}
		}(srv, ln)
	}
	fmt.Fprintln(os.Stderr, "ready")
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	for _, srv := range servers {
		srv.Close()
	}
}
