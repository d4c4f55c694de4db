from yolo.losses.reference import main

main()
