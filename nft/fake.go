package nft

import (
	"context"
	"slices"
	"sync"
)

// Fake is an in-memory Interface for tests: it keeps the table the kernel
// would hold and every plan applied. It is safe for concurrent use: a test
// reads it while a proxier's sync loop applies plans. The tables it hands
// out are never changed afterwards (an apply makes a new one).
type Fake struct {
	mu sync.Mutex
	// table is what the kernel would hold; nil before the first apply.
	table *Table
	// plans lists the plans applied successfully.
	plans []*Plan
	// fail, when set, is called before each apply; a non-nil result fails
	// the apply and leaves table as it was.
	fail func(p *Plan) error
	// attempts counts Apply calls, failed ones included.
	attempts int
}

// Apply records the plan and moves the table to what it commits.
func (f *Fake) Apply(_ context.Context, p *Plan) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attempts++
	if f.fail != nil {
		if err := f.fail(p); err != nil {
			return err
		}
	}
	next := p.ApplyTo(f.table)
	if next != nil {
		if err := next.Validate(); err != nil {
			return err
		}
	}
	f.plans = append(f.plans, p)
	f.table = next
	return nil
}

// Table returns the table the kernel would hold (nil before the first
// apply). Do not change it.
func (f *Fake) Table() *Table {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.table
}

// SetTable makes t the table the kernel holds, as another process
// changing it would.
func (f *Fake) SetTable(t *Table) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.table = t
}

// SetFail makes every later apply call fail first (nil: none fails).
func (f *Fake) SetFail(fail func(p *Plan) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = fail
}

// Plans returns the plans applied successfully, oldest first.
func (f *Fake) Plans() []*Plan {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.plans)
}

// ClearPlans forgets the plans applied so far.
func (f *Fake) ClearPlans() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.plans = nil
}

// Attempts counts Apply calls, failed ones included.
func (f *Fake) Attempts() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.attempts
}

// Check reports whether the table has the chains and sets of want.
func (f *Fake) Check(_ context.Context, want *Table) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.table == nil || len(f.table.Chains) != len(want.Chains) || len(f.table.Sets) != len(want.Sets) {
		return false, nil
	}
	for _, c := range want.Chains {
		if hc := f.table.Chain(c.Name); hc == nil || len(hc.Rules) != len(c.Rules) {
			return false, nil
		}
	}
	return true, nil
}

// LastPlan returns the last plan applied, or nil.
func (f *Fake) LastPlan() *Plan {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.plans) == 0 {
		return nil
	}
	return f.plans[len(f.plans)-1]
}

// Dump renders the table the fake holds.
func (f *Fake) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.table == nil {
		return ""
	}
	return Render(f.table)
}
