package engine

// FreezeHeartbeat stops e's heartbeat while its jobs go on: to the other
// instances it looks like a process that was killed.
func FreezeHeartbeat(e *Engine) {
	e.mu.Lock()
	stop := e.stopBeat
	e.mu.Unlock()
	stop()
	e.beating.Wait()
}
