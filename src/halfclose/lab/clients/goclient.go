// The lab's Go client: net/http's Transport as it comes (standard library only), requests
// separated by idle gaps. Usage: lab-client -url URL -requests N -gap S [-http2]
// One JSON line per request on stdout (the fields of halfclose's RequestRecord it can tell);
// httptrace tells which connection carried each request and whether it was reused.
// The run's CA comes through SSL_CERT_FILE; TLS keys go to SSLKEYLOGFILE when it is set.
package main

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"time"
)

type result struct {
	Index       int    `json:"index"`
	StartNs     int64  `json:"start_ns"`
	LatencyNs   int64  `json:"latency_ns"`
	Status      int    `json:"status"`
	BodyBytes   int    `json:"body_bytes"`
	Error       string `json:"error"`
	LocalPort   int    `json:"local_port"`
	Reused      bool   `json:"reused"`
	HTTPVersion string `json:"http_version"`
	KeepAlive   string `json:"keep_alive"`
}

func main() {
	url := flag.String("url", "", "the image's URL")
	requests := flag.Int("requests", 1, "how many requests")
	gap := flag.Float64("gap", 0, "idle seconds between requests")
	h2 := flag.Bool("http2", false, "allow HTTP/2 (over TLS)")
	flag.Parse()

	transport := http.DefaultTransport.(*http.Transport).Clone()
	if path := os.Getenv("SSLKEYLOGFILE"); path != "" {
		keylog, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer keylog.Close()
		transport.TLSClientConfig = &tls.Config{KeyLogWriter: keylog}
	}
	if !*h2 {
		transport.ForceAttemptHTTP2 = false
		transport.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	client := &http.Client{Transport: transport, Timeout: 10 * time.Second}
	out := json.NewEncoder(os.Stdout)

	for index := 0; index < *requests; index++ {
		if index > 0 {
			time.Sleep(time.Duration(*gap * float64(time.Second)))
		}
		r := result{Index: index}
		trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
			r.Reused = info.Reused
			if addr, ok := info.Conn.LocalAddr().(*net.TCPAddr); ok {
				r.LocalPort = addr.Port
			}
		}}
		start := time.Now()
		r.StartNs = start.UnixNano()
		req, err := http.NewRequest("GET", fmt.Sprintf("%s?n=%d", *url, index), nil)
		if err == nil {
			req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
			var resp *http.Response
			resp, err = client.Do(req)
			if err == nil {
				var body []byte
				body, err = io.ReadAll(resp.Body)
				resp.Body.Close()
				r.Status = resp.StatusCode
				r.BodyBytes = len(body)
				r.HTTPVersion = fmt.Sprintf("%d.%d", resp.ProtoMajor, resp.ProtoMinor)
				if resp.ProtoMajor == 2 {
					r.HTTPVersion = "2"
				}
				r.KeepAlive = resp.Header.Get("Keep-Alive")
			}
		}
		if err != nil {
			r.Error = err.Error()
		}
		r.LatencyNs = time.Since(start).Nanoseconds()
		if err := out.Encode(r); err != nil {
			os.Exit(1)
		}
	}
}
