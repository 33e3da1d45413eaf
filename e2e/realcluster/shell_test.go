package realcluster

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"

	"k8s.io/client-go/kubernetes/fake"
	restclient "k8s.io/client-go/rest"
	clienttesting "k8s.io/client-go/testing"
)

// shellAnswer is a ResponseWrapper returning a fixed /shell answer.
type shellAnswer struct {
	body []byte
	err  error
}

func (a shellAnswer) DoRaw(context.Context) ([]byte, error) { return a.body, a.err }
func (a shellAnswer) Stream(context.Context) (io.ReadCloser, error) {
	return nil, errors.New("not streamed")
}

// fakeNetexec answers /shell requests through the pod proxy of client by
// running the command with the machine's sh, as netexec does in its pod;
// it records the requests.
func fakeNetexec(t *testing.T, client *fake.Clientset) *[]clienttesting.ProxyGetAction {
	var got []clienttesting.ProxyGetAction
	client.PrependProxyReactor("pods", func(action clienttesting.Action) (bool, restclient.ResponseWrapper, error) {
		a := action.(clienttesting.ProxyGetAction)
		got = append(got, a)
		if a.GetPath() != "shell" {
			return true, shellAnswer{err: errors.New("404")}, nil
		}
		out, err := exec.Command("sh", "-c", a.GetParams()["cmd"]).CombinedOutput()
		res := map[string]string{"output": string(out)}
		if err != nil {
			res["error"] = err.Error()
		}
		body, _ := json.Marshal(res)
		return true, shellAnswer{body: body}, nil
	})
	return &got
}

func TestShellReportsOutputAndExitStatus(t *testing.T) {
	client := fake.NewClientset()
	requests := fakeNetexec(t, client)
	p := &PodClient{Client: client, Namespace: "ns1", Name: "client", Port: 8080}
	out, code, err := p.Shell(t.Context(), "echo to stdout; echo to stderr >&2; exit 3")
	if err != nil {
		t.Fatal(err)
	}
	if code != 3 || !strings.Contains(out, "to stdout") || !strings.Contains(out, "to stderr") {
		t.Errorf("got output %q, exit status %d; want both lines and 3", out, code)
	}
	if len(*requests) != 1 {
		t.Fatalf("got %d proxy requests, want 1", len(*requests))
	}
	r := (*requests)[0]
	if r.GetNamespace() != "ns1" || r.GetName() != "client" || r.GetPort() != "8080" || r.GetScheme() != "http" {
		t.Errorf("proxied to %s %s/%s port %s, want http ns1/client port 8080", r.GetScheme(), r.GetNamespace(), r.GetName(), r.GetPort())
	}
}

func TestParseShellResult(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		wantOut    string
		wantCode   int
		wantErr    bool
	}{
		{name: "output and status", body: `{"output":"hello\n` + exitMarker + `0\n"}`, wantOut: "hello\n"},
		{name: "failed command", body: `{"output":"` + exitMarker + `7\n"}`, wantCode: 7},
		{name: "no status: the shell itself failed", body: `{"output":"sh: syntax error","error":"exit status 2"}`, wantErr: true},
		{name: "not JSON", body: `404 page not found`, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, code, err := parseShellResult([]byte(tc.body))
			if (err != nil) != tc.wantErr {
				t.Fatalf("got error %v, want error %v", err, tc.wantErr)
			}
			if out != tc.wantOut || code != tc.wantCode {
				t.Errorf("got %q, %d; want %q, %d", out, code, tc.wantOut, tc.wantCode)
			}
		})
	}
}

func TestShellQuoteKeepsOneWord(t *testing.T) {
	for _, s := range []string{"plain", "it's", `a "b" $c \n 'd'`, "two\nlines", ""} {
		out, err := exec.Command("sh", "-c", "printf %s "+shellQuote(s)).Output()
		if err != nil {
			t.Fatal(err)
		}
		if string(out) != s {
			t.Errorf("sh read %q back as %q", s, out)
		}
	}
}
