//! Statement policy: classification of SQL and the rules that allow, deny or send it for review. (Being built.)
