// SPDX-License-Identifier: BSD-3-Clause

package history

import (
	"fmt"
	"strings"
)

// A logEntry is one thing the server did, at a time on CLOCK_MONOTONIC.
// Blocks and IDs say which blocks and which ops' data it touched, so
// that a report can pick the lines about its block.
type logEntry struct {
	T            int64
	Inst, Conn   int // 0: none
	First, N     int // blocks touched, N == 0: none
	IDs          []int64
	Msg          string
	Episode, Key bool // an episode's act, or a change of instance: always in a report
}

// logf logs what the server did (s.mu held).
func (s *Server) logf(in *instance, c *conn, format string, args ...interface{}) {
	s.addLog(in, c, 0, 0, nil, false, format, args...)
}

// logKey logs an act of an episode or a change of instance.
func (s *Server) logKey(in *instance, c *conn, format string, args ...interface{}) {
	s.addLog(in, c, 0, 0, nil, true, format, args...)
}

// logBlocks logs what the server did to blocks, with the ops whose data
// it carries.
func (s *Server) logBlocks(in *instance, c *conn, first, n int, ids []int64, format string, args ...interface{}) {
	s.addLog(in, c, first, n, ids, false, format, args...)
}

func (s *Server) addLog(in *instance, c *conn, first, n int, ids []int64, key bool, format string, args ...interface{}) {
	e := logEntry{T: mono(), First: first, N: n, IDs: ids, Msg: fmt.Sprintf(format, args...), Key: key}
	if in != nil {
		e.Inst = in.id
	}
	if c != nil {
		e.Conn = c.id
	}
	s.log = append(s.log, e)
}

// touches says whether the entry is about block b or one of the ops.
func (e *logEntry) touches(b int, ops ...int64) bool {
	if e.N > 0 && b >= e.First && b < e.First+e.N {
		return true
	}
	for _, id := range e.IDs {
		for _, o := range ops {
			if id == o && o > 0 {
				return true
			}
		}
	}
	return false
}

// format writes the entry with its time relative to t0.
func (e *logEntry) format(t0 int64) string {
	var who []string
	if e.Inst > 0 {
		who = append(who, fmt.Sprintf("instance %d", e.Inst))
	}
	if e.Conn > 0 {
		who = append(who, fmt.Sprintf("conn %d", e.Conn))
	}
	w := strings.Join(who, " ")
	if w != "" {
		w += ": "
	}
	msg := e.Msg
	if len(e.IDs) > 0 {
		var ids []string
		for _, id := range e.IDs {
			ids = append(ids, opName(id))
		}
		msg += " [data of " + strings.Join(ids, ",") + "]"
	}
	return fmt.Sprintf("%s server %s%s", relTime(e.T, t0), w, msg)
}

// relTime writes t as seconds after t0.
func relTime(t, t0 int64) string {
	return fmt.Sprintf("%+8.3fs", float64(t-t0)/1e9)
}

// blocksString names a range of blocks.
func blocksString(first, n int) string {
	if n == 1 {
		return fmt.Sprintf("block %d", first)
	}
	return fmt.Sprintf("blocks %d-%d", first, first+n-1)
}
