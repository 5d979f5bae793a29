-- Presence rows describe open sockets, which do not outlive a crash either:
-- an unlogged table writes no WAL, so recording a burst of stream opens
-- commits without waiting for a disk flush. (After a crash Postgres empties
-- it, and the replicas that come back record their streams again.)
alter table stream_watchers set unlogged;
