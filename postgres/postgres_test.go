package postgres_test

import (
	"testing"

	"github.com/pushblaster/pushblaster/internal/testdb"
	"github.com/pushblaster/pushblaster/store"
	"github.com/pushblaster/pushblaster/storetest"
)

func TestConformance(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) *store.Store { return testdb.NewPostgres(t).Store })
}
