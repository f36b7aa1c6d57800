"""What a run shows: leaderboard, report, dashboard and neck drawings."""
