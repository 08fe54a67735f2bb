// Package datastore is a go-datastore over the garage-ipfs gRPC service: the
// storage of a kubo node's blocks, kept in a Garage cluster.
//
// It is made to be mounted where kubo keeps its blocks (`/blocks`): keys
// arrive as kubo writes them, `/<unpadded upper-case base32 multihash>`,
// and are sent to the daemon as raw CIDv1s of that multihash (the store is
// keyed by multihash, as kubo's blockstore is). Other keys are not blocks:
// they are never stored here (Put refuses them, reads find nothing).
//
// Every call carries a deadline. The gRPC channel reconnects by itself when
// the daemon restarts; calls made meanwhile wait for it, and a call that
// fails as UNAVAILABLE (the daemon went away under it, or the cluster lost
// its quorum for a moment) is tried again, up to its deadline. The bearer
// token is sent as gRPC metadata and never logged.
package datastore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ipfs/boxo/datastore/dshelp"
	"github.com/ipfs/go-cid"
	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	logging "github.com/ipfs/go-log/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "garage-ipfs/kubo-plugin/pb"
)

var log = logging.Logger("garageipfs")

// DefaultEndpoint is the daemon's default gRPC address.
const DefaultEndpoint = "127.0.0.1:3982"

// DefaultTimeout is the default deadline of one call.
const DefaultTimeout = 30 * time.Second

// Largest gRPC message: a 2 MiB block and its envelope.
const maxMessage = 2<<20 + 64<<10

// Deletes of one batch sent at once.
const deleteConcurrency = 8

// Config says where the blocks live and how to reach them.
type Config struct {
	// Endpoint is the daemon's gRPC address, host:port.
	Endpoint string
	// Namespace is the garage-ipfs namespace holding the blocks; it must be
	// registered (`garage-ipfs namespace create`).
	Namespace string
	// Token is the daemon's write token ("" for none: only a daemon that
	// allows anonymous writes on loopback then accepts writes).
	Token string
	// TokenSource names where the token came from, for error messages
	// (e.g. "token_file /etc/garage-ipfs/token"); never the token itself.
	TokenSource string
	// Timeout is the deadline of one call (0: DefaultTimeout). A batch
	// gets one more Timeout per 32 MiB; a listing, Timeout between two
	// answers.
	Timeout time.Duration
}

// Datastore implements ds.Batching and ds.PersistentDatastore.
type Datastore struct {
	cfg    Config
	conn   *grpc.ClientConn
	client pb.BlockstoreClient

	mu     sync.Mutex
	opened bool
}

var (
	_ ds.Batching            = (*Datastore)(nil)
	_ ds.PersistentDatastore = (*Datastore)(nil)
)

// New makes a datastore. It does not connect: the first call checks the
// set-up (daemon reachable, namespace registered, token accepted) and
// fails with a message that says which is wrong, so that kubo commands
// that do not touch blocks (`ipfs config`) work with the daemon down.
func New(cfg Config) (*Datastore, error) {
	if cfg.Namespace == "" {
		return nil, errors.New("garage-ipfs: no namespace given")
	}
	if cfg.Endpoint == "" {
		cfg.Endpoint = DefaultEndpoint
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	conn, err := grpc.NewClient(cfg.Endpoint,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(maxMessage),
			grpc.MaxCallSendMsgSize(maxMessage),
		),
		// Reconnect quickly after a daemon restart (gRPC's default backoff
		// grows to two minutes).
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  100 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   2 * time.Second,
			},
			MinConnectTimeout: 5 * time.Second,
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("garage-ipfs: endpoint %q: %w", cfg.Endpoint, err)
	}
	return &Datastore{cfg: cfg, conn: conn, client: pb.NewBlockstoreClient(conn)}, nil
}

// call runs one RPC with the deadline `timeout`. Before the set-up was
// checked, calls fail fast when the daemon is down; after, they wait for
// a reconnection up to their deadline.
func (d *Datastore) call(ctx context.Context, timeout time.Duration, op string, f func(context.Context, ...grpc.CallOption) error) error {
	if err := d.open(ctx); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(d.auth(ctx), timeout)
	defer cancel()
	err := f(ctx, grpc.WaitForReady(true))
	// UNAVAILABLE is worth another try while the deadline allows: a call
	// that raced with a daemon restart, or a quorum lost for a moment
	// (a Garage node restarting). Every call here is idempotent: blocks
	// are content-addressed, deletes of absent blocks are no-ops.
	for wait := retryFirst; status.Code(err) == codes.Unavailable; wait = min(2*wait, retryMax) {
		if dl, _ := ctx.Deadline(); time.Until(dl) < wait {
			break
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
		}
		err = f(ctx, grpc.WaitForReady(true))
	}
	if status.Code(err) == codes.NotFound {
		return ds.ErrNotFound
	}
	return d.explain(op, timeout, err)
}

// Waits between two tries of a call that failed with UNAVAILABLE.
const (
	retryFirst = 100 * time.Millisecond
	retryMax   = 2 * time.Second
)

func (d *Datastore) auth(ctx context.Context) context.Context {
	if d.cfg.Token == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+d.cfg.Token)
}

// open checks the set-up once: daemon reachable, namespace registered,
// token right, writes allowed. A failure is not remembered: the next call
// checks again (the daemon may have come up).
func (d *Datastore) open(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.opened {
		return nil
	}
	cctx, cancel := context.WithTimeout(d.auth(ctx), d.cfg.Timeout)
	defer cancel()
	resp, err := d.client.Open(cctx, &pb.OpenRequest{Namespace: d.cfg.Namespace})
	if err != nil {
		switch status.Code(err) {
		case codes.NotFound:
			return fmt.Errorf("garage-ipfs: namespace %q is not registered at the daemon %s (create it with `garage-ipfs namespace create %s`, or make the repo with `garage-ipfs kubo init`)",
				d.cfg.Namespace, d.cfg.Endpoint, d.cfg.Namespace)
		case codes.Unauthenticated:
			return fmt.Errorf("garage-ipfs: the daemon %s refused the write token from %s: %s",
				d.cfg.Endpoint, d.tokenSource(), status.Convert(err).Message())
		}
		return d.explain("open", d.cfg.Timeout, err)
	}
	if !resp.Writable {
		return fmt.Errorf("garage-ipfs: the daemon %s refuses writes without a token; set token_file or token_env in the datastore spec",
			d.cfg.Endpoint)
	}
	log.Infof("garage-ipfs: namespace %q on daemon %s (version %s)", d.cfg.Namespace, d.cfg.Endpoint, resp.Version)
	d.opened = true
	return nil
}

func (d *Datastore) tokenSource() string {
	if d.cfg.TokenSource != "" {
		return d.cfg.TokenSource
	}
	if d.cfg.Token == "" {
		return "nowhere (no token configured)"
	}
	return "the datastore spec"
}

// explain turns a gRPC error into one that says what to do.
func (d *Datastore) explain(op string, timeout time.Duration, err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err // ours, already explained
	}
	switch st.Code() {
	case codes.DeadlineExceeded:
		return fmt.Errorf("garage-ipfs %s: no answer from the daemon %s within %s (%s)", op, d.cfg.Endpoint, timeout, st.Message())
	case codes.Unavailable:
		if strings.Contains(st.Message(), "connection") || strings.Contains(st.Message(), "dial") {
			return fmt.Errorf("garage-ipfs %s: cannot reach the daemon %s (is `garage-ipfs serve` running?): %s", op, d.cfg.Endpoint, st.Message())
		}
		return fmt.Errorf("garage-ipfs %s: the cluster is unavailable (retry later): %s", op, st.Message())
	case codes.Unauthenticated:
		return fmt.Errorf("garage-ipfs %s: the daemon %s refused the write token from %s: %s", op, d.cfg.Endpoint, d.tokenSource(), st.Message())
	case codes.Canceled:
		return fmt.Errorf("garage-ipfs %s: %w", op, context.Canceled)
	}
	return fmt.Errorf("garage-ipfs %s: %s: %s", op, st.Code(), st.Message())
}

// cidOf maps a datastore key to the raw CIDv1 of its multihash.
func cidOf(key ds.Key) (cid.Cid, error) {
	if strings.Count(key.String(), "/") != 1 {
		return cid.Undef, fmt.Errorf("key %s is not a block key (one multihash in kubo's base32 form)", key)
	}
	mh, err := dshelp.DsKeyToMultihash(key)
	if err != nil {
		return cid.Undef, fmt.Errorf("key %s is not a block key: %w", key, err)
	}
	return cid.NewCidV1(cid.Raw, mh), nil
}

// Get returns a block's bytes, or ds.ErrNotFound.
func (d *Datastore) Get(ctx context.Context, key ds.Key) ([]byte, error) {
	c, err := cidOf(key)
	if err != nil {
		return nil, ds.ErrNotFound
	}
	var resp *pb.GetResponse
	err = d.call(ctx, d.cfg.Timeout, "get "+key.String(), func(ctx context.Context, o ...grpc.CallOption) (err error) {
		resp, err = d.client.Get(ctx, &pb.GetRequest{Namespace: d.cfg.Namespace, Cid: c.String()}, o...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp.Data, nil
}

// Has says whether a block is stored.
func (d *Datastore) Has(ctx context.Context, key ds.Key) (bool, error) {
	c, err := cidOf(key)
	if err != nil {
		return false, nil
	}
	var resp *pb.HasResponse
	err = d.call(ctx, d.cfg.Timeout, "has "+key.String(), func(ctx context.Context, o ...grpc.CallOption) (err error) {
		resp, err = d.client.Has(ctx, &pb.HasRequest{Namespace: d.cfg.Namespace, Cid: c.String()}, o...)
		return err
	})
	if err != nil {
		return false, err
	}
	return resp.Has, nil
}

// GetSize returns a block's size, or ds.ErrNotFound.
func (d *Datastore) GetSize(ctx context.Context, key ds.Key) (int, error) {
	c, err := cidOf(key)
	if err != nil {
		return -1, ds.ErrNotFound
	}
	var resp *pb.GetSizeResponse
	err = d.call(ctx, d.cfg.Timeout, "get-size "+key.String(), func(ctx context.Context, o ...grpc.CallOption) (err error) {
		resp, err = d.client.GetSize(ctx, &pb.GetSizeRequest{Namespace: d.cfg.Namespace, Cid: c.String()}, o...)
		return err
	})
	if err != nil {
		return -1, err
	}
	return int(resp.Size), nil
}

// Put stores a block; it returns once the block is on a write quorum.
func (d *Datastore) Put(ctx context.Context, key ds.Key, value []byte) error {
	c, err := cidOf(key)
	if err != nil {
		return fmt.Errorf("garage-ipfs put: %w", err)
	}
	return d.call(ctx, d.cfg.Timeout, "put "+key.String(), func(ctx context.Context, o ...grpc.CallOption) error {
		_, err := d.client.Put(ctx, &pb.PutRequest{Namespace: d.cfg.Namespace, Cid: c.String(), Data: value}, o...)
		return err
	})
}

// Delete removes a block from the namespace (not an error if absent, as
// go-datastore asks). The daemon's answer says whether it found a copy; it
// is not passed on as an error because it carries no safety meaning here:
// every delete also writes the block's delete marker, so a copy the
// daemon did not know (packed through another daemon a moment before)
// dies too (docs/DESIGN.md, "A delete reaches copies it does not know").
func (d *Datastore) Delete(ctx context.Context, key ds.Key) error {
	c, err := cidOf(key)
	if err != nil {
		return nil
	}
	return d.call(ctx, d.cfg.Timeout, "delete "+key.String(), func(ctx context.Context, o ...grpc.CallOption) error {
		_, err := d.client.Delete(ctx, &pb.DeleteRequest{Namespace: d.cfg.Namespace, Cid: c.String()}, o...)
		return err
	})
}

// Sync does nothing: every write is durable when it returns.
func (d *Datastore) Sync(context.Context, ds.Key) error { return nil }

// Close closes the connection.
func (d *Datastore) Close() error { return d.conn.Close() }

// DiskUsage is the bytes of the namespace's blocks (the daemon lists the
// namespace: as slow as a listing; the deadline is ten calls').
func (d *Datastore) DiskUsage(ctx context.Context) (uint64, error) {
	var resp *pb.StatResponse
	err := d.call(ctx, 10*d.cfg.Timeout, "disk-usage", func(ctx context.Context, o ...grpc.CallOption) (err error) {
		resp, err = d.client.Stat(ctx, &pb.StatRequest{Namespace: d.cfg.Namespace}, o...)
		return err
	})
	if errors.Is(err, ds.ErrNotFound) {
		return 0, fmt.Errorf("garage-ipfs disk-usage: namespace %q is no longer registered", d.cfg.Namespace)
	}
	if err != nil {
		return 0, err
	}
	return resp.Bytes, nil
}

// Query lists the namespace (the daemon's List), then applies the query's
// prefix, filters, orders, offset and limit. Values are fetched one by one
// unless KeysOnly; sizes come with the listing.
func (d *Datastore) Query(ctx context.Context, q query.Query) (query.Results, error) {
	if err := d.open(ctx); err != nil {
		return nil, err
	}
	// Our keys are all one level deep: a prefix below the root matches
	// nothing, and needs no listing.
	if p := ds.NewKey(q.Prefix).String(); p != "/" {
		return query.ResultsWithEntries(q, nil), nil
	}
	results := query.ResultsWithContext(q, func(rctx context.Context, out chan<- query.Result) {
		// Ends when the caller's context ends, when the results are
		// closed, or when the daemon is silent for a whole Timeout.
		lctx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		stop := context.AfterFunc(rctx, func() { cancel(context.Canceled) })
		defer stop()
		silent := fmt.Errorf("garage-ipfs list: no answer from the daemon %s within %s", d.cfg.Endpoint, d.cfg.Timeout)
		idle := time.AfterFunc(d.cfg.Timeout, func() { cancel(silent) })
		defer idle.Stop()

		stream, err := d.client.List(d.auth(lctx), &pb.ListRequest{Namespace: d.cfg.Namespace}, grpc.WaitForReady(true))
		for err == nil {
			var item *pb.ListResponse
			if item, err = stream.Recv(); err != nil {
				break
			}
			idle.Reset(d.cfg.Timeout)
			e := query.Entry{Key: dshelp.NewKeyFromBinary(item.Multihash).String(), Size: int(item.Size)}
			if !q.KeysOnly {
				// Each Get has a deadline of its own.
				idle.Stop()
				e.Value, err = d.Get(lctx, ds.RawKey(e.Key))
				idle.Reset(d.cfg.Timeout)
				if errors.Is(err, ds.ErrNotFound) {
					err = nil // deleted since it was listed
					continue
				}
				if err != nil {
					break
				}
			}
			select {
			case out <- query.Result{Entry: e}:
			case <-lctx.Done():
				err = context.Cause(lctx)
			}
		}
		if err == io.EOF || rctx.Err() != nil {
			return
		}
		if context.Cause(lctx) == silent {
			err = silent
		} else {
			err = d.explain("list", d.cfg.Timeout, err)
		}
		select {
		case out <- query.Result{Error: err}:
		case <-rctx.Done():
		}
	})
	// Prefix "/" is everything: the naive pass only filters, orders and
	// pages.
	q.Prefix = ""
	return query.NaiveQueryApply(q, results), nil
}

// Batch collects puts and deletes; Commit sends the puts as one PutMany
// and the deletes after them. The last operation on a key wins.
func (d *Datastore) Batch(context.Context) (ds.Batch, error) {
	return &batch{d: d, ops: map[ds.Key]*[]byte{}}, nil
}

type batch struct {
	d   *Datastore
	mu  sync.Mutex
	ops map[ds.Key]*[]byte // nil: delete
}

func (b *batch) Put(_ context.Context, key ds.Key, value []byte) error {
	if _, err := cidOf(key); err != nil {
		return fmt.Errorf("garage-ipfs put: %w", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ops[key] = &value
	return nil
}

func (b *batch) Delete(_ context.Context, key ds.Key) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ops[key] = nil
	return nil
}

// Commit stores the batch's blocks with one PutMany, then runs its deletes.
// On failure the error names every key that was not written.
func (b *batch) Commit(ctx context.Context) error {
	b.mu.Lock()
	ops := b.ops
	b.ops = map[ds.Key]*[]byte{}
	b.mu.Unlock()

	var puts, dels []ds.Key
	var bytes int
	for k, v := range ops {
		if v == nil {
			dels = append(dels, k)
		} else {
			puts = append(puts, k)
			bytes += len(*v)
		}
	}
	sort.Slice(puts, func(i, j int) bool { return puts[i].String() < puts[j].String() })
	if len(puts) > 0 {
		timeout := b.d.cfg.Timeout * time.Duration(1+bytes/(32<<20))
		var resp *pb.PutManyResponse
		err := b.d.call(ctx, timeout, fmt.Sprintf("put-many (%d blocks)", len(puts)), func(ctx context.Context, o ...grpc.CallOption) error {
			stream, err := b.d.client.PutMany(ctx, o...)
			if err != nil {
				return err
			}
			for _, k := range puts {
				c, _ := cidOf(k) // checked by Put
				req := &pb.PutRequest{Namespace: b.d.cfg.Namespace, Cid: c.String(), Data: *ops[k]}
				if err := stream.Send(req); err != nil {
					// The server ended the stream; its status says why.
					break
				}
			}
			resp, err = stream.CloseAndRecv()
			return err
		})
		if err != nil {
			return err
		}
		if len(resp.Failed) > 0 {
			return failures(resp.Failed, len(puts))
		}
	}
	return b.deleteAll(ctx, dels)
}

// failures says which blocks of a batch were not stored, grouped by reason
// (a lost quorum fails a whole batch with one message).
func failures(failed []*pb.PutFailure, total int) error {
	var reasons []string
	keys := map[string][]string{}
	for _, f := range failed {
		key := f.Cid
		if c, err := cid.Decode(f.Cid); err == nil {
			key = dshelp.MultihashToDsKey(c.Hash()).String()
		}
		if _, seen := keys[f.Error]; !seen {
			reasons = append(reasons, f.Error)
		}
		keys[f.Error] = append(keys[f.Error], key)
	}
	parts := make([]string, len(reasons))
	for i, r := range reasons {
		parts[i] = fmt.Sprintf("%s (%s)", r, strings.Join(keys[r], ", "))
	}
	return fmt.Errorf("garage-ipfs put-many: %d of %d blocks not stored: %s",
		len(failed), total, strings.Join(parts, "; "))
}

func (b *batch) deleteAll(ctx context.Context, keys []ds.Key) error {
	errs := make([]error, len(keys))
	sem := make(chan struct{}, deleteConcurrency)
	var wg sync.WaitGroup
	for i, k := range keys {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			errs[i] = b.d.Delete(ctx, k)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
