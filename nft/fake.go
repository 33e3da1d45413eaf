package nft

import (
	"context"
	"sync"
)

// Fake is an in-memory Interface for tests: it keeps the table the kernel
// would hold and every plan applied.
type Fake struct {
	mu sync.Mutex
	// Table is what the kernel would hold; nil before the first apply.
	Table *Table
	// Plans lists the plans applied successfully.
	Plans []*Plan
	// Fail, when set, is called before each apply; a non-nil result fails the
	// apply and leaves Table as it was.
	Fail func(p *Plan) error
	// Attempts counts Apply calls, failed ones included.
	Attempts int
}

// Apply records the plan and moves Table to what it commits.
func (f *Fake) Apply(_ context.Context, p *Plan) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Attempts++
	if f.Fail != nil {
		if err := f.Fail(p); err != nil {
			return err
		}
	}
	next := p.ApplyTo(f.Table)
	if next != nil {
		if err := next.Validate(); err != nil {
			return err
		}
	}
	f.Plans = append(f.Plans, p)
	f.Table = next
	return nil
}

// Check reports whether Table has the chains and sets of want.
func (f *Fake) Check(_ context.Context, want *Table) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Table == nil || len(f.Table.Chains) != len(want.Chains) || len(f.Table.Sets) != len(want.Sets) {
		return false, nil
	}
	for _, c := range want.Chains {
		if hc := f.Table.Chain(c.Name); hc == nil || len(hc.Rules) != len(c.Rules) {
			return false, nil
		}
	}
	return true, nil
}

// LastPlan returns the last plan applied, or nil.
func (f *Fake) LastPlan() *Plan {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.Plans) == 0 {
		return nil
	}
	return f.Plans[len(f.Plans)-1]
}

// Dump renders the table the fake holds.
func (f *Fake) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Table == nil {
		return ""
	}
	return Render(f.Table)
}
