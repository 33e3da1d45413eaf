package nft

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nftproxy sends the messages google/nftables encodes (encode.go) over a
// socket of its own instead of through nftables.Conn.Flush, because v0.3.0's
// Flush leaves the socket buffers at their defaults (a large batch fails with
// EMSGSIZE; acks overflow the receive buffer and Flush returns ENOBUFS after
// a commit that did happen), asks for an echo of every rule, and stops reading
// at the first error, so the failing message cannot be named.

// ErrOutcomeUnknown is wrapped by Apply errors after which the kernel may or
// may not have committed the transaction (its answer was lost). The caller
// must not trust its idea of the kernel's state and should replace the whole
// table on the next sync.
var ErrOutcomeUnknown = errors.New("transaction outcome unknown")

// ackTimeout bounds the wait for the kernel's answers. The kernel processes a
// batch synchronously inside sendmsg, so the answers are queued by the time
// the send returns; the timeout only guards against a kernel that answers
// fewer messages than expected.
const ackTimeout = 10 * time.Second

// ackBytesPerMessage is the receive buffer reserved per message, as nft does
// (an ack skb takes well under 1 KiB of buffer).
const ackBytesPerMessage = 1024

// transport sends transactions over one netlink socket, opened on first
// use and kept for the Kernel's lifetime. One socket matters for owned tables
// (owner.go): the kernel lets only the socket that owns a table change it,
// and releases the table when that socket closes.
type transport struct {
	netns int // network namespace fd, or -1 for the current one
	// readBuffer overrides the receive buffer size (tests use it to provoke
	// ENOBUFS); 0 sizes it from the batch.
	readBuffer int

	mu   sync.Mutex
	conn *netlink.Conn // nil until the first send, and after close
}

// socket returns the open socket, opening it if needed. t.mu must be held.
func (t *transport) socket() (*netlink.Conn, error) {
	if t.conn != nil {
		return t.conn, nil
	}
	conn, err := dialNetfilter(t.netns)
	if err != nil {
		return nil, err
	}
	t.conn = conn
	return conn, nil
}

// dialNetfilter opens a netfilter netlink socket in the namespace netns
// (an open namespace file descriptor; negative: this process's).
func dialNetfilter(netns int) (*netlink.Conn, error) {
	cfg := &netlink.Config{}
	if netns >= 0 {
		cfg.NetNS = netns
	}
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, cfg)
	if err != nil {
		return nil, fmt.Errorf("open netlink socket: %w", err)
	}
	return conn, nil
}

// request sends one nftables request (a get, or a dump with netlink.Dump)
// of the given family on a socket of its own, outside any transaction, and
// returns the replies that carry an nfgenmsg header. Reads take their own
// socket so that they never interleave with a batch being sent.
func (k *Kernel) request(msg int, flags netlink.HeaderFlags, family byte, attrs []byte) ([]netlink.Message, error) {
	conn, err := dialNetfilter(k.t.netns)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	replies, err := conn.Execute(netlink.Message{
		Header: netlink.Header{Type: tableMsgType(msg), Flags: netlink.Request | flags},
		Data:   append([]byte{family, unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	if err != nil {
		return nil, err
	}
	out := replies[:0]
	for _, m := range replies {
		if len(m.Data) >= 4 {
			out = append(out, m)
		}
	}
	return out, nil
}

// portID returns the netlink port id of the socket, opening it if needed:
// the id the kernel records as the owner of tables it creates.
func (t *transport) portID() (uint32, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	conn, err := t.socket()
	if err != nil {
		return 0, err
	}
	return conn.PID(), nil
}

// close closes the socket; the next send opens a new one.
func (t *transport) close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.closeLocked()
}

func (t *transport) closeLocked() error {
	if t.conn == nil {
		return nil
	}
	err := t.conn.Close()
	t.conn = nil
	return err
}

// send sends msgs as one batch, in one sendmsg, and waits for the kernel's
// verdict on each message.
func (t *transport) send(msgs []message) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	conn, err := t.socket()
	if err != nil {
		return err
	}
	broken, err := t.sendOn(conn, msgs)
	if broken {
		// The socket is in a state we do not understand: start afresh. For
		// an owned table this releases it (owner.go); the next transaction
		// claims it again. After other errors the socket stays: the next
		// send drains whatever answers are left on it.
		_ = t.closeLocked()
	}
	return err
}

// sendOn sends the batch on conn. broken reports an error after which the
// socket should not be used again.
func (t *transport) sendOn(conn *netlink.Conn, msgs []message) (broken bool, err error) {
	// Answers left over from an earlier transaction (after lost acks or a
	// timeout) would be taken for answers to this one. The kernel answers
	// a batch within the sendmsg that carries it, so all of them are queued
	// by now.
	if err := drain(conn); err != nil {
		return true, fmt.Errorf("drain netlink socket: %w", err)
	}
	batch := make([]netlink.Message, 0, len(msgs)+2)
	batch = append(batch, batchMarker(unix.NFNL_MSG_BATCH_BEGIN))
	size := 2 * 20
	for _, m := range msgs {
		nm := m.msg
		// Ask for an ack of every message (so an error names its message) but
		// no echo of rules, which would only fill the receive buffer.
		nm.Header.Flags = (nm.Header.Flags | netlink.Acknowledge) &^ netlink.HeaderFlags(unix.NLM_F_ECHO)
		batch = append(batch, nm)
		size += 16 + (len(nm.Data)+3)&^3
	}
	batch = append(batch, batchMarker(unix.NFNL_MSG_BATCH_END))

	// The whole batch must fit one skb: netlink_sendmsg refuses anything
	// larger than the send buffer with EMSGSIZE. Setting it needs
	// SO_SNDBUFFORCE (CAP_NET_ADMIN) past wmem_max; the library tries that.
	if err := conn.SetWriteBuffer(size + 64<<10); err != nil {
		return true, fmt.Errorf("set netlink send buffer to %d bytes: %w", size, err)
	}
	rb := t.readBuffer
	if rb == 0 {
		rb = max(1<<20, ackBytesPerMessage*len(msgs))
	}
	if err := conn.SetReadBuffer(rb); err != nil {
		return true, fmt.Errorf("set netlink receive buffer to %d bytes: %w", rb, err)
	}

	if _, err := conn.SendMessages(batch); err != nil {
		// Nothing reached the kernel's transaction code.
		return false, fmt.Errorf("send batch of %d messages (%d bytes): %w", len(msgs), size, err)
	}
	if err := conn.SetReadDeadline(time.Now().Add(ackTimeout)); err != nil {
		return true, fmt.Errorf("%w: set netlink read deadline: %w", ErrOutcomeUnknown, err)
	}
	var refused []error
	for i := range msgs {
		_, err := conn.Receive()
		if err == nil {
			continue
		}
		if errors.Is(err, unix.ENOBUFS) {
			return false, fmt.Errorf("%w: kernel answers overflowed the receive buffer after message %d of %d: %w", ErrOutcomeUnknown, i, len(msgs), err)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if len(refused) > 0 {
				break
			}
			return false, fmt.Errorf("%w: no answer for message %d of %d: %w", ErrOutcomeUnknown, i, len(msgs), err)
		}
		var opErr *netlink.OpError
		if !errors.As(err, &opErr) {
			return true, fmt.Errorf("%w: read answer %d of %d: %w", ErrOutcomeUnknown, i, len(msgs), err)
		}
		refused = append(refused, fmt.Errorf("%s: %w", msgs[i].what, err))
	}
	if len(refused) > 0 {
		// The kernel aborted the transaction: nothing of it was applied. Later
		// errors are often consequences of the first.
		return false, &RefusedError{Errs: refused}
	}
	return false, nil
}

// drain discards the messages queued on the socket without blocking, and a
// pending ENOBUFS.
func drain(conn *netlink.Conn) error {
	rc, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var readErr error
	// Datagrams longer than buf are truncated, which discards them just as
	// well.
	var buf [512]byte
	err = rc.Control(func(fd uintptr) {
		for {
			_, _, err := unix.Recvfrom(int(fd), buf[:], unix.MSG_DONTWAIT)
			switch err {
			case nil, unix.ENOBUFS, unix.EINTR:
				continue
			case unix.EAGAIN:
				return
			}
			readErr = err
			return
		}
	})
	return errors.Join(err, readErr)
}

func batchMarker(typ uint16) netlink.Message {
	return netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(typ), Flags: netlink.Request},
		// nfgenmsg: family unspecified, version 0, resource id = subsystem.
		Data: []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES},
	}
}

// RefusedError reports a transaction the kernel refused and rolled back.
type RefusedError struct {
	Errs []error // one per refused message, in order
}

func (e *RefusedError) Error() string {
	msg := fmt.Sprintf("kernel refused the transaction: %v", e.Errs[0])
	if len(e.Errs) > 1 {
		msg += fmt.Sprintf(" (and %d more errors)", len(e.Errs)-1)
	}
	return msg
}

// Unwrap returns the individual errors, so errors.Is finds errnos.
func (e *RefusedError) Unwrap() []error { return e.Errs }

// IsNotFound reports whether err says an object the transaction referred to
// does not exist.
func IsNotFound(err error) bool { return errors.Is(err, unix.ENOENT) }
