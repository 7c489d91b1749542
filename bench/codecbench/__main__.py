from bench.codecbench import main

raise SystemExit(main())
