"""What every layer shares: the records the job carries and writes, their schemas, the stages
and skip reasons they are counted under, and the names of the files they are stored in."""
