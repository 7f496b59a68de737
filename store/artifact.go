package store

import (
	"context"
	"time"

	pb "github.com/pushblaster/pushblaster"
)

// Artifact is an execution's debugging evidence.
type Artifact = pb.Artifact

// PutArtifact stores (or replaces) artefact name of an execution.
func (o ops) PutArtifact(ctx context.Context, id int64, a Artifact) error {
	_, err := o.q.Exec(ctx, `
		INSERT INTO execution_artifacts (execution_id, name, content, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (execution_id, name) DO UPDATE
		SET content = excluded.content, created_at = excluded.created_at, expires_at = excluded.expires_at`,
		id, a.Name, a.Content, Canon(a.CreatedAt), Canon(a.ExpiresAt))
	return dbErr(err, "store artefact %s of execution %d", a.Name, id)
}

// Artifacts returns an execution's artefacts that have not expired at now,
// by name.
func (o ops) Artifacts(ctx context.Context, id int64, now time.Time) ([]Artifact, error) {
	rows, err := o.q.Query(ctx, `
		SELECT name, content, created_at, expires_at FROM execution_artifacts
		WHERE execution_id = $1 AND expires_at > $2 ORDER BY name`, id, Canon(now))
	if err != nil {
		return nil, dbErr(err, "read artefacts of execution %d", id)
	}
	defer rows.Close()
	out := []Artifact{}
	for rows.Next() {
		var (
			a                Artifact
			created, expires nullTime
		)
		if err := rows.Scan(&a.Name, &a.Content, &created, &expires); err != nil {
			return nil, dbErr(err, "read artefacts of execution %d", id)
		}
		a.CreatedAt, a.ExpiresAt = created.t, expires.t
		out = append(out, a)
	}
	return out, dbErr(rows.Err(), "read artefacts of execution %d", id)
}

// DeleteExpiredArtifacts removes artefacts past their retention.
func (o ops) DeleteExpiredArtifacts(ctx context.Context, now time.Time) (int64, error) {
	n, err := o.q.Exec(ctx, `DELETE FROM execution_artifacts WHERE expires_at <= $1`, Canon(now))
	return n, dbErr(err, "delete expired artefacts")
}
